"""The twin's simulated operator takes over a diverging policy; its corrective chunks are executed
and streamed, and Act is refused while it has control."""

import grpc
import numpy as np
import pytest

from fleetloop.actors.bridge import BridgeError, BridgeUnavailable, StopReason
from fleetloop.actors.gates import JointOptions
from tests.bridge.conftest import metric

pytestmark = pytest.mark.timeout(60)

TWIN = {"realtime": True, "gate": JointOptions(default_threshold=0.3, patience=1), "max_takeover_steps": 16,
        "operator_horizon": 8, "hand_back": ()}
"""At 20 Hz a takeover runs to its cap of 16 steps = 0.8 s: long enough to see Act refused."""


def _takeover(stream) -> list:
    """The messages of one takeover, started through ended."""
    messages = [stream.get(timeout=5)]
    while not messages[-1].ended:
        messages.append(stream.get(timeout=5))
    return messages


def test_a_diverging_policy_is_taken_over_and_corrected(serve):
    server, client = serve(twin=TWIN)
    stream = client.subscribe_interventions()
    started = metric("fleetloop_bridge_interventions_total", reason="divergence")
    refused = metric("fleetloop_bridge_rejected_total", reason="operator_control")

    obs = client.reset(seed=2, options={"goal": "red"})["arm_0"]
    home = obs.state[:2].copy()
    bad_chunk = np.tile(home, (8, 1))  # the bad policy: stay home whatever the instruction says
    result = client.act(obs, bad_chunk)
    assert result.stop_reason is StopReason.OPERATOR_TOOK_OVER
    assert result.executed_steps == 0  # the gate judged the whole chunk: none of it ran
    with pytest.raises(BridgeError) as info:
        client.act(result.observation, bad_chunk)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION and info.value.reason == "operator_control"
    assert "operator has control" in info.value.details
    assert metric("fleetloop_bridge_active_interventions") == 1

    messages = _takeover(stream)
    first, chunks = messages[0], [m for m in messages if m.actions is not None]
    assert first.started and first.reason == "divergence" and first.operator_id == "sim-expert"
    assert first.robot_id == "arm_0" and first.episode_id == obs.episode_id and first.step == 0
    assert [m.actions.shape for m in chunks] == [(8, 2), (8, 2)] and [m.step for m in chunks] == [0, 8]
    assert all(np.isfinite(m.actions).all() and m.states.shape == (len(m.actions), 4) for m in chunks)
    assert messages[-1].ended and messages[-1].ended_by == "cap" and messages[-1].step == 16
    assert metric("fleetloop_bridge_interventions_total", reason="divergence") == started + 1
    assert metric("fleetloop_bridge_rejected_total", reason="operator_control") == refused + 1
    assert metric("fleetloop_bridge_active_interventions") == 0

    # The corrections moved the arm toward its goal, and control is back with the policy.
    after = client.observe("arm_0")
    assert after.step == 16 and after.info["distance"] < obs.info["distance"]
    assert np.allclose(chunks[0].states[0], result.observation.state)
    for earlier, later in zip(chunks, chunks[1:]):
        assert not np.allclose(earlier.states[-1], later.states[0]), "each row is the state before its own action"
    good = client.act(after, np.tile(after.state[:2], (2, 1)))
    assert good.stop_reason is StopReason.COMPLETED and good.executed_steps == 2


def test_takeover_on_request_and_cut_short_by_reset(serve):
    server, client = serve(twin={**TWIN, "max_takeover_steps": 40})
    stream = client.subscribe_interventions(["arm_0"])
    obs = client.reset(seed=4)["arm_0"]
    server.backend.request_takeover("arm_0", "requested")
    with pytest.raises(BridgeError) as info:
        client.act(obs, np.tile(obs.state[:2], (2, 1)))
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    first = stream.get(timeout=5)
    assert first.started and first.reason == "requested" and first.step == 0
    client.reset(seed=5)  # ends the takeover: a chunkless ended message
    messages = _takeover(stream)
    assert messages[-1].ended and messages[-1].actions is None and messages[-1].reason == "requested"
    assert messages[-1].ended_by == "reset"
    fresh = client.observe("arm_0")
    assert fresh.step == 0 and client.act(fresh, server.backend.expert.action_chunk("arm_0", 2)).executed_steps == 2


def test_a_takeover_right_after_subscribing_is_received(serve):
    server, client = serve(twin=TWIN)
    client.reset(seed=1)
    with client.subscribe_interventions(["arm_0"]) as stream:
        server.backend.request_takeover("arm_0")  # no waiting: the bridge confirmed the subscription
        first = stream.get(timeout=5)
    assert first is not None and first.started and first.reason == "requested" and first.robot_id == "arm_0"


def test_a_stopped_bridge_breaks_the_stream(serve):
    server, client = serve()
    stream = client.subscribe_interventions()
    assert stream.open
    server.stop(grace=None)
    with pytest.raises(BridgeUnavailable, match=f"robot bridge at {client.target}"):  # ended or cut off
        stream.get(timeout=5)
    assert not stream.open
    with pytest.raises(BridgeUnavailable):  # and keeps saying so
        stream.get(timeout=0)


def test_stream_limit_is_resource_exhausted(serve):
    server, client = serve(max_streams=1)
    with client.subscribe_interventions():
        with pytest.raises(BridgeError) as info:
            client.subscribe_interventions()
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit of 1" in info.value.details
