"""RateLimiter: keeps a table's inserts and samples in ratio (Reverb's RateLimiter).

Every insert (an episode written) and every sample (a window returned) of a table is
counted in the table's counters hash in Redis, so all writers and samplers of that table
share one limiter. With ``diff = inserts * samples_per_insert - samples``:

- an insert may proceed while the table would hold at most ``min_size_to_sample`` items
  after it (filling up is free), otherwise only if ``diff`` after the insert is
  ``<= max_diff``;
- a sample of ``n`` windows may proceed only if the table holds at least
  ``min_size_to_sample`` items and ``diff - n >= min_diff``.

A call that may not proceed waits (polling Redis) until it may or its timeout passes, then
raises :class:`~fleetloop.replay.errors.RateLimitedError`. The checks run inside the Lua
scripts that insert and count samples (:data:`RATE_LIMITER_LUA`), so they are atomic.

:func:`await_admission` is the client side of the wait.

Named presets validate their arguments: :class:`MinSize` and :class:`SampleToInsertRatio`.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

RATE_LIMITER_LUA = """
local function rate_limiter(config_key)
  local f = redis.call('HMGET', config_key, 'rl_samples_per_insert', 'rl_min_size_to_sample',
                       'rl_min_diff', 'rl_max_diff')
  if not f[1] then return nil end
  return {spi = tonumber(f[1]), min_size = tonumber(f[2]), min_diff = tonumber(f[3]),
          max_diff = tonumber(f[4])}
end
local function can_insert(rl, size, inserts, samples, n)
  if not rl or size + n <= rl.min_size then return true end
  return (inserts + n) * rl.spi - samples <= rl.max_diff
end
local function can_sample(rl, size, inserts, samples, n)
  if not rl then return true end
  if size < rl.min_size then return false end
  return inserts * rl.spi - samples - n >= rl.min_diff
end
"""
"""Lua functions ``rate_limiter(config_key)``, ``can_insert`` and ``can_sample`` that the
replay's scripts prepend; the limiter's parameters are the ``rl_*`` config hash fields."""


@dataclass(frozen=True)
class RateLimiter:
    """Reverb's general rate limiter; prefer the named presets below.

    Args:
        samples_per_insert: target windows sampled per episode inserted (> 0).
        min_size_to_sample: items the table must hold before any sample (>= 1).
        min_diff: lowest ``inserts * samples_per_insert - samples`` a sample may leave.
        max_diff: highest ``inserts * samples_per_insert - samples`` an insert may reach.

    Raises:
        ValueError: naming the argument and value.
    """

    samples_per_insert: float
    min_size_to_sample: int
    min_diff: float
    max_diff: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.samples_per_insert) and self.samples_per_insert > 0):
            raise ValueError(
                f"samples_per_insert must be finite and > 0, got {self.samples_per_insert}"
            )
        if (
            isinstance(self.min_size_to_sample, bool)
            or not isinstance(self.min_size_to_sample, int)
            or self.min_size_to_sample < 1
        ):
            raise ValueError(
                f"min_size_to_sample must be an int >= 1, got {self.min_size_to_sample!r}"
            )
        if math.isnan(self.min_diff) or math.isnan(self.max_diff):
            raise ValueError(f"min_diff and max_diff must not be NaN, got "
                             f"{self.min_diff}, {self.max_diff}")
        if self.min_diff > self.max_diff:
            raise ValueError(
                f"min_diff ({self.min_diff}) must be <= max_diff ({self.max_diff})"
            )

    @property
    def max_samples_per_call(self) -> float:
        """Most windows one sample call may take from the table without deadlocking."""
        return self.max_diff - self.min_diff

    def to_fields(self) -> dict[str, str]:
        """The ``rl_*`` fields stored in the table's config hash."""
        return {
            "rl_samples_per_insert": repr(float(self.samples_per_insert)),
            "rl_min_size_to_sample": str(self.min_size_to_sample),
            "rl_min_diff": repr(float(self.min_diff)),
            "rl_max_diff": repr(float(self.max_diff)),
        }

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> "RateLimiter | None":
        """Rebuild the limiter stored as ``rl_*`` config hash fields; None if there is none."""
        if "rl_samples_per_insert" not in fields:
            return None
        return RateLimiter(
            samples_per_insert=float(fields["rl_samples_per_insert"]),
            min_size_to_sample=int(fields["rl_min_size_to_sample"]),
            min_diff=float(fields["rl_min_diff"]),
            max_diff=float(fields["rl_max_diff"]),
        )

    def describe(self) -> str:
        """One line naming the limiter's parameters, for error messages."""
        return (
            f"samples_per_insert={self.samples_per_insert:g}, "
            f"min_size_to_sample={self.min_size_to_sample}, "
            f"min_diff={self.min_diff:g}, max_diff={self.max_diff:g}"
        )


class MinSize(RateLimiter):
    """Block samples until the table holds ``min_size_to_sample`` items; never block inserts.

    Raises:
        ValueError: min_size_to_sample < 1.
    """

    def __init__(self, min_size_to_sample: int) -> None:
        super().__init__(
            samples_per_insert=1.0,
            min_size_to_sample=min_size_to_sample,
            min_diff=-math.inf,
            max_diff=math.inf,
        )


class SampleToInsertRatio(RateLimiter):
    """Keep samples per insert near ``samples_per_insert``, within ``error_buffer``.

    Args:
        samples_per_insert: target windows sampled per episode inserted (> 0).
        min_size_to_sample: items the table must hold before any sample (>= 1).
        error_buffer: how far (in samples) the counts may drift from the target ratio
            either way; must be >= max(1, samples_per_insert) or calls could block forever.

    Raises:
        ValueError: naming the argument and value.
    """

    def __init__(
        self, samples_per_insert: float, min_size_to_sample: int, error_buffer: float
    ) -> None:
        if not (math.isfinite(error_buffer) and error_buffer >= max(1.0, samples_per_insert)):
            raise ValueError(
                f"error_buffer must be >= max(1.0, samples_per_insert={samples_per_insert:g}), "
                f"got {error_buffer}: a smaller buffer could block inserts and samples forever"
            )
        offset = samples_per_insert * min_size_to_sample
        super().__init__(
            samples_per_insert=samples_per_insert,
            min_size_to_sample=min_size_to_sample,
            min_diff=offset - error_buffer,
            max_diff=offset + error_buffer,
        )



def await_admission(
    call: Callable[[], list], refused: Callable[[list], bool], timeout_s: float,
    pause_s: tuple[float, float] = (0.002, 0.05),
) -> tuple[bool, list]:
    """Call a script until its reply is not a refusal or ``timeout_s`` has passed, pausing
    between tries from ``pause_s[0]``, doubling up to ``pause_s[1]``.

    Returns:
        Whether the last reply was admitted, and that reply.
    """
    deadline, pause = time.monotonic() + timeout_s, pause_s[0]
    while True:
        reply = call()
        remaining = deadline - time.monotonic()
        if not refused(reply) or remaining <= 0:
            return not refused(reply), reply
        time.sleep(min(pause, remaining))
        pause = min(2 * pause, pause_s[1])
