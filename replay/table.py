"""The replay's vocabulary (Reverb's ``table.h``) and TableConfig, a table's settings.

- **Table**: a named collection of items in Redis (``pretrain``, ``rollouts``,
  ``corrections``, or any ``[a-z][a-z0-9_]{0,31}`` name). Its keys are
  ``fl:table:<name>:{items,counters,config,priorities,tally,evicted}`` (:mod:`.keys`). Tables are
  mixed at sampling time by the WindowSampler's mixture weights.
- **Item**: one stored episode (:class:`~fleetloop.replay.episode.Episode`) with a
  priority; a sample returns *windows* cut from items (frame t, state t, actions
  t..t+H-1).
- **Sampler** (a selector): decides which item each window comes from: ``uniform``,
  ``prioritized`` (probability ∝ priority ** priority_exponent, priorities updatable by any
  client) or ``fifo`` (the oldest item). See :mod:`.selectors`. By default
  (``sample_by: window``) the odds are per training window: an item's selector odds times its
  windows, so short episodes (a relabelled planning state) are not drawn as often as long ones.
- **Remover** (a selector): decides which item is deleted when an insert takes the table
  past its capacity. Only ``fifo`` (the oldest item) exists; it runs inside the write
  script, so eviction is atomic with the insert. Evicted ids are remembered for
  ``evicted_id_ttl_s`` so that a retried write of an evicted episode does not store it again.
- **RateLimiter**: may block inserts and samples to keep ``samples / inserts`` near a
  target (:mod:`.rate_limiter`); its counts live in Redis, so every writer and sampler of
  the table shares it.

A table's configuration is stored in Redis (``fl:table:<name>:config``) by
``ReplayClient.configure_table`` or ``ReplayClient(url, tables=...)``, so writers enforce
capacity and rate limits, and samplers pick their selector, without being told. A table
never configured behaves as ``TableConfig()``: unbounded, uniform, not rate limited.
"""

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from .rate_limiter import MinSize, RateLimiter, SampleToInsertRatio
from .selectors import SELECTORS

REMOVERS: tuple[str, ...] = ("fifo",)
"""Removers a table may use."""
SAMPLE_BY: tuple[str, ...] = ("window", "episode")
"""What a table's sampling odds are per (``TableConfig.sample_by``)."""


@dataclass(frozen=True)
class TableConfig:
    """Capacity, selectors and rate limiter of one table; ``TableConfig.from_dict(d)`` builds
    it from plain config values.

    Raises:
        ValueError: naming the field and the value.
    """

    # ---- storage ----
    capacity: int | None = None
    """Most episodes the table holds per server (per shard); past it the remover evicts."""
    remover: Literal["fifo"] = "fifo"
    """Which episode an insert past capacity evicts: ``fifo`` = the oldest."""
    evicted_id_ttl_s: float = 3600.0
    """How long the id of an evicted episode is remembered: a write of that id within this time
    (a retry whose first attempt was applied, its reply lost) stores nothing. 0 forgets at once."""
    # ---- sampling ----
    sampler: Literal["uniform", "prioritized", "fifo"] = "uniform"
    """Which episode a window comes from."""
    priority_exponent: float = 1.0
    """Exponent on priorities for ``prioritized`` (0 = uniform)."""
    sample_by: Literal["window", "episode"] = "window"
    """What the sampler's odds are per: ``window`` (an episode in proportion to its training
    windows, its stored frame steps, times its selector odds: every window of a uniform table equally
    likely, as LeRobot samples frames) or ``episode`` (Reverb's items: a 1-step episode as likely as
    a 64-step one). ``fifo`` always takes the oldest episode."""
    # ---- rate limiting ----
    samples_per_insert: float | None = None
    """Target windows sampled per episode inserted; None disables SampleToInsertRatio."""
    min_size_to_sample: int = 1
    """Episodes the table must hold before a sample proceeds (> 1 alone gives MinSize)."""
    error_buffer: float | None = None
    """Allowed drift (in samples) from samples_per_insert; required with it."""
    block_inserts: bool = True
    """With samples_per_insert: whether an insert waits while the learner lags (Reverb's limiter).
    False: inserts never wait, so a fleet never stops; while the learner is slow episodes queue in
    the table (bounded by capacity), and only samples are paced."""

    def __post_init__(self) -> None:
        if self.capacity is not None and (
            isinstance(self.capacity, bool) or not isinstance(self.capacity, int)
            or self.capacity < 1
        ):
            raise ValueError(f"capacity must be None or an int >= 1, got {self.capacity!r}")
        ttl = self.evicted_id_ttl_s
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not (math.isfinite(ttl) and ttl >= 0):
            raise ValueError(f"evicted_id_ttl_s must be a finite number >= 0, got {ttl!r}")
        if self.remover not in REMOVERS:
            raise ValueError(f"remover must be one of {REMOVERS}, got {self.remover!r}")
        if self.sampler not in SELECTORS:
            raise ValueError(f"sampler must be one of {sorted(SELECTORS)}, got {self.sampler!r}")
        if self.sample_by not in SAMPLE_BY:
            raise ValueError(f"sample_by must be one of {SAMPLE_BY}, got {self.sample_by!r}")
        if not (math.isfinite(self.priority_exponent) and self.priority_exponent >= 0):
            raise ValueError(
                f"priority_exponent must be finite and >= 0, got {self.priority_exponent!r}"
            )
        if self.samples_per_insert is None and self.error_buffer is not None:
            raise ValueError(
                f"error_buffer ({self.error_buffer}) needs samples_per_insert to be set"
            )
        if self.samples_per_insert is not None and self.error_buffer is None:
            raise ValueError(
                f"samples_per_insert ({self.samples_per_insert}) needs an error_buffer "
                f"(>= max(1, samples_per_insert))"
            )
        self.rate_limiter()

    def rate_limiter(self) -> RateLimiter | None:
        """The preset these fields describe: SampleToInsertRatio when samples_per_insert is
        set, MinSize when only min_size_to_sample > 1, else None.

        Raises:
            ValueError: the preset rejects the values.
        """
        if self.samples_per_insert is not None:
            limiter = SampleToInsertRatio(
                self.samples_per_insert, self.min_size_to_sample, self.error_buffer
            )
            if self.block_inserts:
                return limiter
            return RateLimiter(limiter.samples_per_insert, limiter.min_size_to_sample, limiter.min_diff, math.inf)
        if self.min_size_to_sample != 1:
            return MinSize(self.min_size_to_sample)
        return None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TableConfig":
        """Build from plain values, e.g. a YAML mapping.

        Raises:
            ValueError: unknown keys, or invalid values.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown table config keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain values; ``TableConfig.from_dict(c.to_dict()) == c``."""
        return asdict(self)

    def to_fields(self) -> dict[str, str]:
        """The table's config hash: non-None fields plus the rate limiter's ``rl_*``."""
        stored = {k: repr(v) if isinstance(v, float) else str(v)
                  for k, v in self.to_dict().items() if v is not None}
        limiter = self.rate_limiter()
        return stored | (limiter.to_fields() if limiter else {})

    @classmethod
    def from_fields(cls, stored: Mapping[str, str]) -> "TableConfig":
        """Rebuild from the config hash (decoded); an empty hash gives ``TableConfig()``."""
        parsers = {"capacity": int, "min_size_to_sample": int, "priority_exponent": float,
                   "evicted_id_ttl_s": float, "samples_per_insert": float, "error_buffer": float,
                   "block_inserts": lambda text: text == "True"}
        return cls(**{
            f.name: parsers.get(f.name, str)(stored[f.name])
            for f in fields(cls) if f.name in stored
        })
