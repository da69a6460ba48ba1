"""Simulated environments: PettingZoo ParallelEnvs over MuJoCo, one agent per robot.

- ``reach``: ReachEnv, a planar two-link arm reaches the coloured ball named by a language
  instruction; ReachExpert is its scripted expert.

``make_env(name, **kwargs)`` builds an environment by registry name.
"""

from __future__ import annotations

from typing import Any

from pettingzoo import ParallelEnv

from fleetloop.actors.envs.expert import ReachExpert
from fleetloop.actors.envs.reach import COLOURS, ReachEnv

ENVS: dict[str, type[ParallelEnv]] = {"reach": ReachEnv}


def make_env(name: str, **kwargs: Any) -> ParallelEnv:
    """Build the environment registered as ``name`` with constructor ``kwargs``.

    Raises:
        ValueError: ``name`` is not registered; the message lists the known names.
    """
    if name not in ENVS:
        raise ValueError(f"unknown env {name!r}; known envs: {sorted(ENVS)}")
    return ENVS[name](**kwargs)


__all__ = ["COLOURS", "ENVS", "ReachEnv", "ReachExpert", "make_env"]
