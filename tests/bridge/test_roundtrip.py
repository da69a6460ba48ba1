"""GetInfo, Reset, Observe and Act of the reach twin through RobotClient, over real gRPC."""

import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fleetloop.actors.bridge import StopReason
from fleetloop.actors.envs import ReachEnv, ReachExpert
from fleetloop.protos.security import open_channel

from tests.bridge.conftest import DEADLINE_S, metric

pytestmark = pytest.mark.timeout(60)


def test_info_describes_the_reach_arm(serve):
    _, client = serve(twin={"max_horizon": 16})
    info = client.info()
    assert info.robot_ids == ("arm_0",) and info.embodiment == "sim_arm" and info.backend == "mujoco-twin"
    assert (info.state_dim, info.action_dim, info.max_horizon) == (4, 2, 16)
    assert info.control_rate_hz == 20.0 and info.image_size == (64, 64)
    assert info.action_low.tolist() == [-2.0, -2.5] and info.action_high.tolist() == [2.0, 2.5]


def test_health_is_serving(serve):
    server, _ = serve()
    with open_channel(server.address, []) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "fleetloop.robot.v1.RobotService"):
            status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=DEADLINE_S).status
            assert status == health_pb2.HealthCheckResponse.SERVING


def test_reset_observe_act_round_trip(serve):
    _, client = serve(twin={"gate": None})  # no simulated operator
    first = client.reset(seed=3, options={"goal": "blue"})["arm_0"]
    assert first.step == 0 and not first.done and first.image is None
    assert first.instruction == "reach the blue ball"
    assert first.state.dtype == np.float32 and first.state.shape == (4,)
    assert set(first.info) == {"distance", "success"}

    again = client.observe("arm_0", want_image=True)
    assert again.episode_id == first.episode_id and np.array_equal(again.state, first.state)
    assert again.image.shape == (64, 64, 3) and again.image.dtype == np.uint8 and again.image.any()
    png = client.observe("arm_0", want_image=True, png=True)
    assert np.array_equal(png.image, again.image)

    target = first.state[:2] + np.float32(0.05)
    result = client.act(first, np.tile(target, (6, 1)), execute_steps=4, want_image=True)
    assert result.executed_steps == 4 and result.stop_reason is StopReason.COMPLETED
    assert result.step_states.shape == (4, 4)
    assert np.array_equal(result.step_states[-1], result.observation.state)
    obs = result.observation
    assert obs.step == 4 and obs.episode_id == first.episode_id and obs.image.shape == (64, 64, 3)
    assert not np.array_equal(obs.state, first.state)
    assert np.array_equal(client.observe("arm_0").state, obs.state)

    second = client.reset(seed=3)["arm_0"]
    assert second.episode_id != first.episode_id and second.step == 0


def _goal_configuration(seed: int, max_steps: int) -> np.ndarray:
    """The expert's goal joints for the episode ``seed`` starts, from a local replica of the env
    (the seed fixes the layout); the twin is reached through the client only."""
    replica = ReachEnv(max_steps=max_steps)
    replica.reset(seed=seed)
    return ReachExpert(replica).goal_configuration("arm_0")


def test_expert_driven_episode_through_the_client_reaches_success(serve):
    _, client = serve(twin={"max_steps": 40})
    before = metric("fleetloop_bridge_interventions_total", reason="divergence")
    acts = metric("fleetloop_bridge_act_seconds_count")
    goal = _goal_configuration(seed=11, max_steps=40)
    obs = client.reset(seed=11)["arm_0"]
    while not obs.done:
        joints = obs.state[:2].astype(np.float64)
        reach = 0.2 * np.arange(1, 9)[:, None]  # the expert's ramp: 0.2 rad per step toward the goal
        result = client.act(obs, joints + np.clip(goal - joints, -reach, reach))
        assert result.stop_reason in (StopReason.COMPLETED, StopReason.EPISODE_ENDED)
        obs = result.observation
    assert obs.step == 40 and obs.success and obs.info["distance"] < 0.03
    assert metric("fleetloop_bridge_interventions_total", reason="divergence") == before  # the gate stayed quiet
    assert metric("fleetloop_bridge_act_seconds_count") == acts + 5
    assert metric("fleetloop_bridge_requests_total", method="Act", code="OK") >= 5
