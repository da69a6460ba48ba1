"""ScenePolicy: the policy that drives one env's scene, shared by the env actor and the evaluator.

One DualSystemPolicy (the weights of one version) and one inference ``Policy`` per robot of the
scene, each with its own System 2 cache and denoising noise. ``reset(seed)`` seeds every robot's
noise from the episode seed, so the same weights on the same seed play the same episode wherever
they run; ``plans()`` gives ``run_episodes`` one planning function per robot. Weights are swapped
(``load``) only between plans, never while a chunk is being planned.

A weight subscriber hands each received version to ``receive``, which holds it aside; ``refresh``
swaps the newest held version in at a moment the caller chooses (an episode's start, or a chunk's
planning step with ``actors.weights_refresh=chunk``) and records where in the episode it did
(``version_changes``), so every recorded step keeps the version that acted there.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from fleetloop.system import DualSystemPolicy, Policy, Processor, embodiment_id, embodiment_layout, model_preset
from fleetloop.system.checkpoint import tensors_digest

if TYPE_CHECKING:
    from fleetloop.config import ModelSection


class ScenePolicy:
    """The model of ``model.preset`` driving every robot of ``env``.

    Args:
        model: the run's ``model`` section (preset, tokenizer, inference steps, System 2 cadence).
        env: the scene (its robots, embodiment and action dim).
        on_plan: called with the seconds each chunk took to plan (a metric).
    """

    def __init__(self, model: "ModelSection", env, on_plan: Callable[[float], None] | None = None):
        self.model_cfg = model_preset(model.preset)
        self.model = DualSystemPolicy(self.model_cfg).eval()
        processor = Processor(self.model_cfg, tokenizer_dir=model.tokenizer_dir)
        self.policies = {agent: Policy(self.model, processor, num_inference_steps=model.num_inference_steps,
                                       system2_every=model.system2_every)
                         for agent in env.possible_agents}
        self.embodiment_id = embodiment_id(env.embodiment)
        self.layout = embodiment_layout(env.embodiment)
        self.action_dim = env.action_dim
        self._on_plan = on_plan
        self._lock = threading.Lock()
        self._loaded_dtypes: dict[str, torch.dtype] = {}
        self._held: tuple[dict[str, torch.Tensor], int] | None = None
        self._held_lock = threading.Lock()
        self.version = 0
        """The weight version loaded (0: none yet, the model's initial weights)."""
        self.version_changes: list[tuple[int, int]] = []
        """``(step, version)`` of every refresh since the episode's start (``reset``)."""

    @property
    def horizon(self) -> int:
        return self.model_cfg.action_head.action_horizon

    def load(self, tensors: dict[str, torch.Tensor], version: int) -> None:
        """Swap in a complete set of weights (strict: every tensor of the model, no other) as ``version``."""
        with self._lock:
            self.model.load_state_dict(tensors, strict=True)
            self._loaded_dtypes = {name: tensor.dtype for name, tensor in tensors.items()}
            self.version = version

    def receive(self, version: int, tensors: dict[str, torch.Tensor]) -> None:
        """Hold a complete, verified version until the next ``refresh`` (a newer one replaces it); a
        weight subscriber's ``on_version``."""
        with self._held_lock:
            if self._held is None or version > self._held[1]:
                self._held = (tensors, version)

    def refresh(self, step: int = 0) -> int | None:
        """Swap in the held version, if any; returns it (None: nothing newer held). A refresh at a
        ``step`` > 0 of an episode is recorded in ``version_changes``."""
        with self._held_lock:
            held, self._held = self._held, None
        if held is None or held[1] <= self.version:
            return None
        self.load(*held)
        if step > 0:
            self.version_changes.append((step, self.version))
        return self.version

    @property
    def held_version(self) -> int:
        """The newest version received and not yet swapped in (the loaded one if none)."""
        with self._held_lock:
            return self._held[1] if self._held is not None else self.version

    def digest(self) -> tuple[int, str]:
        """The loaded version and ``tensors_digest`` of the weights the policy runs now, in the dtypes
        they were loaded in (exact: a model in a wider dtype casts back losslessly)."""
        with self._lock:
            state = self.model.state_dict()
            return self.version, tensors_digest({name: state[name].to(dtype)
                                                 for name, dtype in self._loaded_dtypes.items()})

    def reset(self, seed: int) -> None:
        """Start an episode: the same episode seed gives every robot the same noise as anywhere else."""
        self.version_changes = []
        for k, policy in enumerate(self.policies.values()):
            policy.reset(seed=seed * len(self.policies) + k)

    def plans(self) -> dict[str, Callable[[np.ndarray, np.ndarray, str], np.ndarray]]:
        """One planning function per robot: (image, state, instruction) -> action chunk."""
        return {agent: functools.partial(self._plan, policy) for agent, policy in self.policies.items()}

    def _plan(self, policy: Policy, image: np.ndarray, state: np.ndarray, instruction: str) -> np.ndarray:
        start = time.perf_counter()
        with self._lock:
            chunk = policy.act({"image": image, "state": state, "instruction": instruction,
                                "embodiment_id": self.embodiment_id})
        if self._on_plan is not None:
            self._on_plan(time.perf_counter() - start)
        if self.layout is not None and chunk.shape[-1] != self.action_dim:
            # The model drives part of the robot (GR-1: arms and hands); the other joints hold
            # their current positions (the GR-1 state is its joint positions, in action order).
            chunk = self.layout.scatter("action", chunk, state[: self.action_dim])
        return chunk
