"""The robot bridge: a gRPC RobotService so one actor drives a simulated twin or a real robot.

- ``backend``: the ``RobotBackend`` contract a hardware integrator implements, and its types.
- ``twin``: ``MujocoTwinBackend``, the simulated twin over our envs and scripted experts.
- ``server``: ``RobotBridgeServer``, a backend served over gRPC (health, TLS, token, metrics).
- ``client``: ``RobotClient``, typed calls with deadlines; ``BridgeUnavailable`` when the bridge is gone;
  ``InterventionStream``, a confirmed intervention subscription.
- ``episode``: ``run_bridge_episode``, one episode of one robot recorded through the bridge.
- ``connection``: ``BridgeConnection``, an actor's link to its bridge (checks, reconnects, discards);
  it imports the model package (torch), so import it from its module.

See docs/robot_bridge.md.
"""

from fleetloop.actors.bridge.backend import (
    ActResult,
    Intervention,
    InvalidRequest,
    NotReady,
    Observation,
    RobotBackend,
    RobotError,
    RobotInfo,
    StopReason,
    UnknownRobot,
)
from fleetloop.actors.bridge.client import BridgeError, BridgeUnavailable, InterventionStream, RobotClient
from fleetloop.actors.bridge.server import RobotBridgeServer
from fleetloop.actors.bridge.twin import MujocoTwinBackend

__all__ = [
    "ActResult", "BridgeError", "BridgeUnavailable", "Intervention", "InterventionStream", "InvalidRequest",
    "MujocoTwinBackend",
    "NotReady", "Observation", "RobotBackend", "RobotBridgeServer", "RobotClient", "RobotError", "RobotInfo",
    "StopReason", "UnknownRobot",
]
