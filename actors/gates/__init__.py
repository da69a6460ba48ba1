"""Gates: the registry of how a simulated operator decides to take a robot over.

``GATES`` maps a kind to its class; each class declares its ``Options`` (a pydantic model with a
``kind`` literal), which ``actors.dagger.gate`` validates against. A new gate is one module
with a ``Gate`` subclass and its options, plus one line here.

- ``task_space`` (TaskSpaceGate, the default): the effector paths and grasps of the two chunks.
- ``joint`` (JointGate): joint targets, a threshold per joint group.
"""

from __future__ import annotations

from fleetloop.actors.gates.base import Gate, GateOptions, Proposal, Verdict
from fleetloop.actors.gates.joint_space import JointGate, JointOptions
from fleetloop.actors.gates.task_space import TaskSpaceGate, TaskSpaceOptions

GATES: dict[str, type[Gate]] = {gate.kind: gate for gate in (TaskSpaceGate, JointGate)}
DEFAULT_GATE = TaskSpaceGate.kind


def make_gate(options: GateOptions, action_groups: dict[str, tuple[int, int]] | None = None) -> Gate:
    """The gate of ``options.kind`` (a fresh one per robot)."""
    return GATES[options.kind](options, action_groups)


__all__ = ["DEFAULT_GATE", "GATES", "Gate", "GateOptions", "JointGate", "JointOptions", "Proposal", "TaskSpaceGate",
           "TaskSpaceOptions", "Verdict", "make_gate"]
