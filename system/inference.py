"""Policy: the actors' inference wrapper, one raw observation in, one action chunk out."""

from typing import Any

import numpy as np
import torch

from fleetloop.system.policy import DualSystemPolicy, VisionLanguage
from fleetloop.system.processor import Processor


class Policy:
    """Runs a DualSystemPolicy on raw observations, optionally reusing System 2's output.

    The action dim of each embodiment comes from its registered normalisation statistics
    (`DualSystemPolicy.set_normalization`), so those must be set before acting.
    """

    def __init__(self, model: DualSystemPolicy, processor: Processor | None = None, seed: int | None = None):
        """Args:
        model: the policy; put in eval mode here.
        processor: builds batches; defaults to Processor(model.config).
        seed: seeds the denoising noise for reproducible chunks; None uses the global RNG.
        """
        self.model = model.eval()
        self.processor = processor or Processor(model.config)
        self.device = next(model.parameters()).device
        self.generator = None
        if seed is not None:
            self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self._vl: VisionLanguage | None = None

    def reset(self) -> None:
        """Forget the cached vision-language tokens (call at episode start)."""
        self._vl = None

    def act(self, observation: dict[str, Any], refresh_vl: bool = True) -> np.ndarray:
        """One action chunk for `observation`.

        Args:
            observation: image (h, w, 3) uint8, state (S,), instruction str, embodiment_id int.
            refresh_vl: run System 2 on this observation; if False and a cache exists,
                reuse the vision-language tokens of the last refreshed call.

        Returns:
            (H, action_dim) float32 actions in raw units, action_dim as registered.

        Raises:
            ValueError: for a bad observation or an embodiment without statistics.
        """
        batch = {k: v.to(self.device) for k, v in self.processor.collate([observation]).items()}
        embodiment = int(batch["embodiment_id"][0])
        action_dim = int(self.model.action_dim[embodiment])
        if action_dim == 0:
            raise ValueError(f"embodiment_id: {embodiment} has no statistics; call set_normalization first")
        if refresh_vl or self._vl is None:
            with torch.no_grad():
                self._vl = self.model.encode_vision_language(batch)
        action = self.model.get_action(batch, vl=self._vl, generator=self.generator)
        return action[0, :, :action_dim].cpu().numpy()
