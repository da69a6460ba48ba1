"""The twin's simulated operator takes over a diverging policy; its corrective chunks are executed
and streamed, and Act is refused while it has control."""

import queue
import threading
import time

import grpc
import numpy as np
import pytest

from fleetloop.actors.bridge import BridgeError, StopReason
from tests.bridge.conftest import metric

pytestmark = pytest.mark.timeout(60)

TWIN = {"realtime": True, "gate_threshold": 0.3, "gate_steps": 3, "takeover_steps": 16, "operator_horizon": 8}
"""At 20 Hz a takeover lasts 16 steps = 0.8 s: long enough to see Act refused."""


def _follow(server, client, robot_ids=()) -> queue.Queue:
    """Stream interventions into a queue on a thread (an exception ends up in the queue too);
    returns once the stream is subscribed."""
    items: queue.Queue = queue.Queue()

    def run():
        try:
            for item in client.interventions(robot_ids, timeout_s=20):
                items.put(item)
        except BridgeError as exc:
            items.put(exc)

    listening = server.backend.feed.subscriptions + 1
    threading.Thread(target=run, daemon=True).start()
    deadline = time.monotonic() + 10
    while server.backend.feed.subscriptions < listening:
        assert time.monotonic() < deadline, "the intervention stream did not subscribe"
        time.sleep(0.01)
    return items


def _takeover(items: queue.Queue) -> list:
    """The messages of one takeover, started through ended."""
    messages = [items.get(timeout=5)]
    while not messages[-1].ended:
        messages.append(items.get(timeout=5))
    return messages


def test_a_diverging_policy_is_taken_over_and_corrected(serve):
    server, client = serve(twin=TWIN)
    items = _follow(server, client)
    started = metric("fleetloop_bridge_interventions_total", reason="divergence")
    refused = metric("fleetloop_bridge_rejected_total", reason="operator_control")

    obs = client.reset(seed=2, options={"goal": "red"})["arm_0"]
    home = obs.state[:2].copy()
    bad_chunk = np.tile(home, (8, 1))  # the bad policy: stay home whatever the instruction says
    result = client.act(obs, bad_chunk)
    assert result.stop_reason is StopReason.OPERATOR_TOOK_OVER
    assert result.executed_steps == 3  # the third divergent step is not executed: the operator takes it
    with pytest.raises(BridgeError) as info:
        client.act(result.observation, bad_chunk)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "operator has control" in info.value.details
    assert metric("fleetloop_bridge_active_interventions") == 1

    messages = _takeover(items)
    first, chunks = messages[0], [m for m in messages if m.actions is not None]
    assert first.started and first.reason == "divergence" and first.operator_id == "sim-expert"
    assert first.robot_id == "arm_0" and first.episode_id == obs.episode_id and first.step == 3
    assert [m.actions.shape for m in chunks] == [(8, 2), (8, 2)] and [m.step for m in chunks] == [3, 11]
    assert all(np.isfinite(m.actions).all() and m.states.shape == (len(m.actions), 4) for m in chunks)
    assert chunks[-1].ended
    assert metric("fleetloop_bridge_interventions_total", reason="divergence") == started + 1
    assert metric("fleetloop_bridge_rejected_total", reason="operator_control") == refused + 1
    assert metric("fleetloop_bridge_active_interventions") == 0

    # The corrections moved the arm toward its goal, and control is back with the policy.
    after = client.observe("arm_0")
    assert after.step == 19 and after.info["distance"] < obs.info["distance"]
    assert np.allclose(chunks[0].states[0], result.observation.state)
    for earlier, later in zip(chunks, chunks[1:]):
        assert not np.allclose(earlier.states[-1], later.states[0]), "each row is the state before its own action"
    good = client.act(after, np.tile(after.state[:2], (2, 1)))
    assert good.stop_reason is StopReason.COMPLETED and good.executed_steps == 2


def test_takeover_on_request_and_cut_short_by_reset(serve):
    server, client = serve(twin={**TWIN, "takeover_steps": 40})
    items = _follow(server, client, ["arm_0"])
    obs = client.reset(seed=4)["arm_0"]
    server.backend.request_takeover("arm_0")
    with pytest.raises(BridgeError) as info:
        client.act(obs, np.tile(obs.state[:2], (2, 1)))
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    first = items.get(timeout=5)
    assert first.started and first.reason == "requested" and first.step == 0
    client.reset(seed=5)  # ends the takeover: a chunkless ended message
    messages = _takeover(items)
    assert messages[-1].ended and messages[-1].actions is None and messages[-1].reason == "requested"
    fresh = client.observe("arm_0")
    assert fresh.step == 0 and client.act(fresh, np.tile(fresh.state[:2], (2, 1))).executed_steps == 2


def test_stream_limit_is_resource_exhausted(serve):
    server, client = serve(max_streams=1)
    _follow(server, client)
    with pytest.raises(BridgeError) as info:
        next(client.interventions())
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit of 1" in info.value.details
