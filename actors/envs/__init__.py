"""Simulated environments: PettingZoo ParallelEnvs over MuJoCo, one agent per robot.

- ``reach``: ReachEnv, a planar two-link arm reaches the coloured ball named by a language
  instruction; ReachExpert is its scripted expert.
- ``gr1_pick_place``: GR1PickPlaceEnv, a GR-1 humanoid puts the named object on the named
  target; GR1PickPlaceExpert is its scripted expert (see docs/gr1_sim.md).
- ``gr1_handover``: GR1HandoverEnv, one GR-1 hands the named object to another, who places it
  on the named target; GR1HandoverExpert scripts both.

``make_env(name, **kwargs)`` builds an environment by registry name, ``make_expert(name, env)``
its scripted expert.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pettingzoo import ParallelEnv

from fleetloop.actors.envs.expert import ReachExpert
from fleetloop.actors.envs.gr1_expert import GR1HandoverExpert, GR1PickPlaceExpert
from fleetloop.actors.envs.handover import GR1HandoverEnv
from fleetloop.actors.envs.pick_place import GR1PickPlaceEnv
from fleetloop.actors.envs.reach import COLOURS, ReachEnv

if TYPE_CHECKING:
    from fleetloop.config import ActorsSection, ModelSection

ENVS: dict[str, type[ParallelEnv]] = {"reach": ReachEnv, "gr1_pick_place": GR1PickPlaceEnv, "gr1_handover": GR1HandoverEnv}
EXPERTS: dict[str, type] = {"reach": ReachExpert, "gr1_pick_place": GR1PickPlaceExpert, "gr1_handover": GR1HandoverExpert}
"""Env name -> its scripted expert class (``action_chunk(agent, horizon)``, ``action(agent)``)."""


def make_env(name: str, **kwargs: Any) -> ParallelEnv:
    """Build the environment registered as ``name`` with constructor ``kwargs``.

    Raises:
        ValueError: ``name`` is not registered; the message lists the known names.
    """
    if name not in ENVS:
        raise ValueError(f"unknown env {name!r}; known envs: {sorted(ENVS)}")
    return ENVS[name](**kwargs)


def env_options(acfg: "ActorsSection", model: "ModelSection") -> dict[str, Any]:
    """Constructor kwargs of a run's env as its actors and twin bridges build it: ``actors.max_steps``,
    ``shuffle_layout``, ``state_includes_object_pose`` and the camera size of ``model.preset``."""
    from fleetloop.system import model_preset  # torch: import on use

    options = {"image_size": model_preset(model.preset).vision.image_size, "max_steps": acfg.max_steps,
               "shuffle_layout": acfg.shuffle_layout}
    if acfg.state_includes_object_pose:
        options["state_includes_object_pose"] = True
    return options


def make_expert(name: str, env: ParallelEnv) -> Any:
    """The scripted expert of the env registered as ``name``, attached to ``env``."""
    if name not in EXPERTS:
        raise ValueError(f"unknown env {name!r}; known envs: {sorted(EXPERTS)}")
    return EXPERTS[name](env)


__all__ = [
    "COLOURS", "ENVS", "EXPERTS", "GR1HandoverEnv", "GR1HandoverExpert", "GR1PickPlaceEnv", "GR1PickPlaceExpert",
    "ReachEnv", "ReachExpert", "env_options", "make_env", "make_expert",
]
