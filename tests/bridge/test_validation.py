"""Every malformed or untimely request gets the right gRPC status naming the problem, is counted,
and leaves the robot exactly where it was."""

import dataclasses

import grpc
import numpy as np
import pytest

from fleetloop.actors.bridge import BridgeError
from fleetloop.actors.bridge.wire import f32_bytes
from fleetloop.protos import robot_pb2, robot_pb2_grpc
from tests.bridge.conftest import DEADLINE_S, metric

pytestmark = pytest.mark.timeout(60)

MAX_MESSAGE_BYTES = 64 << 10


@pytest.fixture
def bridge(serve):
    """A started episode on a twin with max_horizon 8 (no operator gate), its first observation,
    and a plain stub for hand-made requests."""
    server, client = serve(twin={"max_horizon": 8, "gate": None}, max_message_bytes=MAX_MESSAGE_BYTES)
    obs = client.reset(seed=5)["arm_0"]
    hold = np.tile(obs.state[:2], (4, 1))
    client.act(obs, hold, execute_steps=2)  # the robot is mid-episode, at step 2
    obs = client.observe("arm_0")
    with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 1 << 24)]) as channel:
        yield client, obs, robot_pb2_grpc.RobotServiceStub(channel)


def _chunk(obs, actions: np.ndarray, **fields) -> robot_pb2.ActionChunk:
    request = {"robot_id": obs.robot_id, "episode_id": obs.episode_id, "step": obs.step, "horizon": actions.shape[0],
               "action_dim": actions.shape[1], "actions": f32_bytes(actions), "execute_steps": actions.shape[0]}
    return robot_pb2.ActionChunk(**{**request, **fields})


def _good(obs) -> np.ndarray:
    return np.tile(obs.state[:2] + np.float32(0.3), (4, 1))


def _with(array: np.ndarray, index: tuple[int, int], value: float) -> np.ndarray:
    array = array.copy()
    array[index] = value
    return array


CASES = [
    # (id, request builder, code, reason label, words in the details)
    ("unknown-robot", lambda o: _chunk(o, _good(o), robot_id="arm_9"), "NOT_FOUND", "unknown_robot", "arm_9"),
    ("stale-episode", lambda o: _chunk(o, _good(o), episode_id="old-1"), "FAILED_PRECONDITION", "stale_episode",
     "old-1"),
    ("stale-step", lambda o: _chunk(o, _good(o), step=0), "FAILED_PRECONDITION", "stale_step", "planned at step 0"),
    ("wrong-action-dim", lambda o: _chunk(o, np.zeros((4, 3), np.float32)), "INVALID_ARGUMENT", "bad_shape",
     "action_dim must be 2"),
    ("wrong-length", lambda o: _chunk(o, _good(o), horizon=5), "INVALID_ARGUMENT", "bad_length",
     "got 32 bytes, expected 40"),
    ("nan", lambda o: _chunk(o, _with(_good(o), (3, 1), np.nan)), "INVALID_ARGUMENT", "non_finite", "step 3, dim 1"),
    ("inf", lambda o: _chunk(o, _with(_good(o), (0, 0), -np.inf)), "INVALID_ARGUMENT", "non_finite", "step 0, dim 0"),
    ("execute-more-than-horizon", lambda o: _chunk(o, _good(o), execute_steps=5), "INVALID_ARGUMENT",
     "bad_execute_steps", "execute_steps must be in 1..horizon (4), got 5"),
    ("execute-none", lambda o: _chunk(o, _good(o), execute_steps=0), "INVALID_ARGUMENT", "bad_execute_steps", "got 0"),
    ("horizon-above-limit", lambda o: _chunk(o, np.tile(o.state[:2], (9, 1))), "INVALID_ARGUMENT", "bad_horizon",
     "horizon must be in 1..8, got 9"),
    ("empty-chunk", lambda o: _chunk(o, np.zeros((0, 2), np.float32)), "INVALID_ARGUMENT", "bad_horizon", "got 0"),
]


@pytest.mark.parametrize(("build", "code", "reason", "words"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_bad_chunk_is_refused_whole(bridge, build, code, reason, words):
    client, obs, stub = bridge
    before = metric("fleetloop_bridge_rejected_total", reason=reason)
    with pytest.raises(grpc.RpcError) as info:
        stub.Act(build(obs), timeout=DEADLINE_S)
    assert info.value.code() == grpc.StatusCode[code]
    assert words in info.value.details()
    assert metric("fleetloop_bridge_rejected_total", reason=reason) == before + 1
    after = client.observe("arm_0")
    assert after.step == obs.step and np.array_equal(after.state, obs.state), "a refused chunk moved the robot"
    assert client.act(obs, _good(obs)).executed_steps == 4  # and the robot still takes a good chunk


def test_oversized_message_is_resource_exhausted(bridge):
    client, obs, stub = bridge
    huge = np.zeros((MAX_MESSAGE_BYTES // 8 + 1, 2), np.float32)
    with pytest.raises(grpc.RpcError) as info:
        stub.Act(_chunk(obs, huge), timeout=DEADLINE_S)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in info.value.details()
    with pytest.raises(BridgeError) as refused:  # the client's own limit refuses it before sending
        client.act(obs, huge)
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.observe("arm_0").step == obs.step


def test_client_errors_carry_code_and_details(bridge):
    client, obs, _ = bridge
    with pytest.raises(BridgeError) as info:
        client.act(dataclasses.replace(obs, step=1), _good(obs))
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "stale chunk: planned at step 1, arm_0 is at step 2" in str(info.value)
    with pytest.raises(BridgeError) as info:
        client.observe("arm_7")
    assert info.value.code == grpc.StatusCode.NOT_FOUND and "unknown robot_id 'arm_7'" in info.value.details


def test_nothing_before_reset_and_nothing_after_the_episode(serve):
    _, client = serve(twin={"max_steps": 8, "gate": None})
    with pytest.raises(BridgeError) as info:
        client.observe("arm_0")
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION and "no episode" in info.value.details
    with pytest.raises(BridgeError) as info:
        client.subscribe_interventions(["arm_9"])
    assert info.value.code == grpc.StatusCode.NOT_FOUND and "arm_9" in info.value.details
    obs = client.reset(seed=1)["arm_0"]
    result = client.act(obs, np.tile(obs.state[:2], (8, 1)))
    assert result.observation.done and result.executed_steps == 8
    with pytest.raises(BridgeError) as info:
        client.act(result.observation, np.tile(obs.state[:2], (2, 1)))
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION and "is over" in info.value.details


def test_bad_reset_options_are_invalid_argument(serve):
    _, client = serve()
    with pytest.raises(BridgeError) as info:
        client.reset(options={"goal": "purple"})
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "purple" in info.value.details
    with pytest.raises(BridgeError) as info:
        client.observe("arm_0")  # a refused reset leaves no episode running
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION and "call Reset" in info.value.details
