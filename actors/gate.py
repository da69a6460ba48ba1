"""InterventionGate: when a (simulated) operator takes a robot over from the policy.

The gate compares each commanded action with what the expert/operator would command in the
same state. When they differ by more than ``threshold`` (max abs over the action dims) for
``patience`` consecutive steps, the gate fires and the operator keeps control for
``takeover_steps`` steps, then hands back. Used by HG-DAgger rollouts and the mujoco-twin
robot bridge alike.
"""

from __future__ import annotations

import numpy as np


class InterventionGate:
    """Divergence counter plus takeover timer of one robot.

    Args:
        threshold: divergence in action units (radians for joint targets) that counts a step.
        patience: consecutive divergent steps that fire the gate.
        takeover_steps: steps the operator drives once the gate fired.

    Raises:
        ValueError: an argument out of range.
    """

    def __init__(self, threshold: float, patience: int, takeover_steps: int):
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        if patience < 1 or takeover_steps < 1:
            raise ValueError(f"patience and takeover_steps must be >= 1, got {patience} and {takeover_steps}")
        self.threshold = threshold
        self.patience = patience
        self.takeover_steps = takeover_steps
        self.reset()

    def reset(self) -> None:
        """Forget divergence and any takeover (a new episode)."""
        self._divergent = 0
        self._remaining = 0

    @property
    def operator_in_control(self) -> bool:
        return self._remaining > 0

    def check(self, commanded: np.ndarray, reference: np.ndarray) -> bool:
        """Count one policy step; True when it fires the gate (a takeover starts now)."""
        gap = float(np.max(np.abs(np.asarray(commanded) - np.asarray(reference))))
        self._divergent = self._divergent + 1 if gap > self.threshold else 0
        if self._divergent >= self.patience:
            self.take_over()
            return True
        return False

    def take_over(self) -> None:
        """Start a takeover now (the gate fired, or an operator asked for control)."""
        self._divergent = 0
        self._remaining = self.takeover_steps

    def operator_step(self) -> None:
        """Count one step the operator drove; control returns to the policy after the last."""
        self._remaining = max(0, self._remaining - 1)
