"""BridgeConnection: an actor drives only a bridge that fits its model, waits a bounded time for a
missing bridge, and reconnects to one that came back."""

import dataclasses
import socket
import time

import numpy as np
import pytest

from fleetloop.actors.bridge import BridgeUnavailable, MujocoTwinBackend, RobotBridgeServer, RobotClient
from fleetloop.actors.bridge.connection import BridgeConnection, BridgeMismatch, check_bridge
from tests.bridge.conftest import metric

pytestmark = pytest.mark.timeout(60)


def hold(image, state, instruction):
    return np.tile(state[:2], (16, 1))


def test_a_bridge_that_does_not_fit_the_actor_is_named(serve):
    _, client = serve()
    info = client.info()
    assert check_bridge(info, "sim_arm", 8, client.target) == "arm_0"
    with pytest.raises(BridgeMismatch) as error:
        check_bridge(info, "gr1", 8, client.target)
    message = str(error.value)
    assert f"robot bridge at {client.target} does not fit this actor" in message
    assert "embodiment is 'sim_arm', the actor's model drives 'gr1'" in message
    assert "state_dim is 4, the gr1 layout has 44" in message and "action_dim is 2, the gr1 layout has 44" in message
    with pytest.raises(BridgeMismatch) as error:
        check_bridge(dataclasses.replace(info, robot_ids=("arm_0", "arm_1"), max_horizon=4), "sim_arm", 8, "b:1")
    assert "max_horizon is 4, below actors.execute_steps (8)" in str(error.value)
    assert "it serves 2 robots ['arm_0', 'arm_1']; an actor drives one robot per bridge" in str(error.value)


def test_no_bridge_within_the_reconnect_timeout_is_a_clear_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{sock.getsockname()[1]}"  # nothing listens there
    with pytest.raises(BridgeUnavailable, match=f"actor-c: no robot bridge at {target} within 1 s"):
        BridgeConnection(RobotClient(target, deadline_s=0.5), "actor-c", "sim_arm", 8, reconnect_timeout_s=1.0)


def test_the_next_episode_reconnects_to_a_restarted_bridge(serve):
    server, client = serve()
    connection = BridgeConnection(client, "actor-c", "sim_arm", 8, reconnect_timeout_s=30.0)
    reconnects = metric("fleetloop_actor_bridge_reconnects_total", actor="actor-c")
    assert len(connection.episode(hold, seed=0, evaluation=False).states) == 64
    port = server.port
    server.stop(grace=None)
    deadline = time.monotonic() + 10
    while connection.connected:  # the intervention stream notices the bridge is gone
        assert time.monotonic() < deadline, "the connection did not notice the bridge stopped"
        time.sleep(0.01)
    again = RobotBridgeServer(MujocoTwinBackend("reach"), port=port)
    try:
        assert again.start() == port
        assert len(connection.episode(hold, seed=1, evaluation=False).states) == 64
        assert again.backend.feed.subscriptions == 1, "the actor follows the new bridge's interventions"
    finally:
        connection.close()
        again.stop(grace=None)
    assert metric("fleetloop_actor_bridge_reconnects_total", actor="actor-c") == reconnects + 1
