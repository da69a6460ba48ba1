"""Policy: the actors' inference wrapper, one raw observation in, one action chunk out.

System 2 (vision-language) is slower and changes less than System 1 (the DiT), so the
paper runs it at 10 Hz and System 1 faster. Here every `act()` runs System 1 (K Euler
steps, one chunk of H actions) and System 2 runs on every `system2_every`-th call, when the
instruction or embodiment changed, or after `reset()`; other calls reuse its cached tokens.
Calling `act()` at f Hz therefore runs System 2 at f / system2_every Hz.
"""

from typing import Any

import numpy as np
import torch

from fleetloop.system.policy import DualSystemPolicy, VisionLanguage
from fleetloop.system.processor import Processor


class Policy:
    """Runs a DualSystemPolicy on raw observations, reusing System 2's output between refreshes.

    The action dim of each embodiment comes from its registered normalisation statistics
    (`DualSystemPolicy.set_normalization` / `set_statistics`), so those must be set first.
    """

    def __init__(
        self,
        model: DualSystemPolicy,
        processor: Processor | None = None,
        seed: int | None = None,
        num_inference_steps: int | None = None,
        system2_every: int = 1,
    ):
        """Args:
        model: the policy; put in eval mode here.
        processor: builds batches; defaults to Processor(model.config).
        seed: seeds the denoising noise for reproducible chunks; None uses the global RNG.
        num_inference_steps: Euler steps K; None = the preset's num_inference_timesteps.
        system2_every: run System 2 on every N-th act() call (1 = every call).
        """
        if num_inference_steps is not None and num_inference_steps < 1:
            raise ValueError(f"num_inference_steps: expected >= 1, got {num_inference_steps}")
        if system2_every < 1:
            raise ValueError(f"system2_every: expected >= 1, got {system2_every}")
        self.model = model.eval()
        self.processor = processor or Processor(model.config)
        self.num_inference_steps = num_inference_steps
        self.system2_every = system2_every
        self.device = next(model.parameters()).device
        self.generator = None
        if seed is not None:
            self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self._vl: VisionLanguage | None = None
        self._vl_key: tuple[str, int] | None = None
        self._calls = 0

    def reset(self, seed: int | None = None) -> None:
        """Start an episode: forget the cached System 2 tokens and restart the refresh schedule;
        with ``seed``, re-seed the denoising noise (the same episode seed gives the same chunks)."""
        if seed is not None:
            self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self._vl = None
        self._vl_key = None
        self._calls = 0

    def act(self, observation: dict[str, Any], refresh_vl: bool | None = None) -> np.ndarray:
        """One action chunk for `observation`.

        Args:
            observation: image (h, w, 3) uint8, state (S,), instruction str, and
                embodiment_id (int slot or registered tag).
            refresh_vl: True runs System 2 now, False reuses the cache if there is one,
                None follows the schedule (every `system2_every` calls).

        Returns:
            (H, action_dim) float32 actions in raw units, action_dim as registered.

        Raises:
            ValueError: for a bad observation (naming the key, expected and actual shape),
            an unknown embodiment or one without statistics.
        """
        batch = {k: v.to(self.device) for k, v in self.processor.collate([observation]).items()}
        embodiment = int(batch["embodiment_id"][0])
        action_dim = int(self.model.action_dim[embodiment])
        if action_dim == 0:
            raise ValueError(f"embodiment_id: {embodiment} has no statistics; call set_normalization first")
        state_dim, given = int(self.model.state_dim[embodiment]), int(batch["state_mask"][0].sum())
        if given != state_dim:
            raise ValueError(
                f"state: expected shape ({state_dim},) for embodiment {embodiment} (its statistics), got ({given},)"
            )
        key = (observation["instruction"], embodiment)
        due = self._calls % self.system2_every == 0 or key != self._vl_key
        if self._vl is None or (refresh_vl if refresh_vl is not None else due):
            with torch.no_grad():
                self._vl = self.model.encode_vision_language(batch)
            self._vl_key = key
        self._calls += 1
        action = self.model.get_action(
            batch, vl=self._vl, generator=self.generator, num_steps=self.num_inference_steps
        )
        return action[0, :, :action_dim].cpu().numpy()
