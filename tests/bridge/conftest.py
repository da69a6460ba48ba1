"""Fixtures of the robot bridge suites: a reach twin served on 127.0.0.1 and a client to it."""

from collections.abc import Callable, Iterator

import pytest
from prometheus_client import REGISTRY

from fleetloop.actors.bridge import MujocoTwinBackend, RobotBridgeServer, RobotClient

DEADLINE_S = 5.0


def metric(name: str, **labels: str) -> float:
    """Current value of a bridge metric sample (0 when never set)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[RobotBridgeServer, RobotClient]]]:
    """Factory: serve a fresh reach twin (``twin=`` kwargs for the backend, the rest for the server)
    and return the started server with a client; all are stopped at teardown."""
    started: list[tuple[RobotBridgeServer, RobotClient]] = []

    def make(twin: dict | None = None, client: dict | None = None, **server_kwargs):
        server = RobotBridgeServer(MujocoTwinBackend("reach", **(twin or {})), **server_kwargs)
        port = server.start()
        bridge = RobotClient(f"127.0.0.1:{port}", **{"deadline_s": DEADLINE_S, **(client or {})})
        started.append((server, bridge))
        return server, bridge

    yield make
    for server, bridge in started:
        bridge.close()
        server.stop(grace=None)
