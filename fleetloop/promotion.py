"""The promotion gate of ``weights.promotion: evaluated``: which weight versions the fleet may run.

Vocabulary:

- *promoted*: a version the fleet (env actors, robot bridges) may run; the learner's
  WeightService tells fleet members of promoted versions only (``WeightPublisher.promote``).
- *fleet version*: the newest promoted version, and *its success* the evaluator's figure for it.

The loop promotes the first version it publishes (the fleet must run something), then every
version the evaluator scores at least the fleet version's success minus ``weights.promotion_margin``.
A fleet never runs a version the evaluator scored clearly worse than the one it runs: in
``bench/async_loop.py`` on GR-1 the first versions an async learner published after a fresh
optimizer's warm-up scored 0.00 against the starting 0.60, and the fleet ran them for minutes.
The evaluator's figures are noisy (20 episodes: about +-0.2), hence the margin: without it the
bar would ratchet up on lucky evaluations and hold the fleet back on an old version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EPSILON = 1e-9
"""Float slack of the comparison (success rates are ratios of episode counts)."""


@dataclass
class PromotionGate:
    """Decides promotions from evaluations; the loop carries them out on the learner."""

    margin: float
    version: int = 0
    """The fleet version (0: none yet)."""
    success: float | None = None
    """The evaluator's success of the fleet version (None: not evaluated yet)."""
    promoted: list[int] = field(default_factory=list)
    """Every version promoted, in order."""

    def is_fleet_version(self, evaluation: dict[str, Any]) -> bool:
        return evaluation["version"] == self.version

    def admits(self, evaluation: dict[str, Any]) -> bool:
        """Whether the evaluated version may replace the fleet version: newer, and its success at
        least the fleet version's minus the margin (any success while the fleet version has none)."""
        if evaluation["version"] <= self.version:
            return False
        return self.success is None or evaluation["success_rate"] >= self.success - self.margin - EPSILON

    def promote(self, version: int, success: float | None = None) -> None:
        """Record that ``version`` (evaluated at ``success``, if known) is the fleet version now."""
        self.version, self.success = version, success
        self.promoted.append(version)

    def record_fleet_success(self, success: float) -> None:
        """The evaluator's figure for the fleet version (promoted before it was evaluated)."""
        self.success = success

    def refusal(self, evaluation: dict[str, Any]) -> str:
        """Why an evaluated version was not promoted, for the log."""
        return (f"weights version {evaluation['version']} not promoted: success {evaluation['success_rate']:.2f} is "
                f"below the fleet's version {self.version} ({self.success:.2f}) by more than "
                f"weights.promotion_margin={self.margin:g}")
