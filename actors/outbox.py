"""An actor's outbox of episodes on their way to the replay.

An episode counts as written only once Redis acknowledged it: then, and only then, its id goes
to the actor's audit file (fsynced) and its counter. Until then it waits in the outbox, in
order, and is retried with backoff while the replay is unreachable, timing out, paused or
rate-limiting. Retries are safe because ``ReplayClient.write_episode`` is idempotent on the
episode id (an ambiguous timeout that did store the episode is answered as a duplicate).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import prometheus_client as prom

from fleetloop.replay import Episode, ReplayClient
from fleetloop.replay.errors import InvalidEpisodeError, ReplayTimeoutError, ReplayUnavailableError

log = logging.getLogger(__name__)

PENDING = prom.Gauge("fleetloop_actor_unacknowledged_episodes",
                     "Episodes the actor holds because the replay has not acknowledged them yet.", ["actor"])
RETRIES = prom.Counter("fleetloop_actor_write_retries_total",
                       "Episode writes retried after the replay was unreachable, timed out or rate-limited.",
                       ["actor"])
MAX_BACKOFF_S = 2.0
TRANSIENT = (ReplayUnavailableError, ReplayTimeoutError)
"""Errors after which the same write is retried (RateLimitedError is a ReplayTimeoutError)."""


class Pending(NamedTuple):
    table: str
    episode: Episode
    priority: float


class Outbox:
    """Writes an actor's episodes to the replay in order, holding each until it is acknowledged.

    Args:
        replay: the replay client.
        actor_id: label of the metrics.
        audit_path: JSON lines ``{"table", "episode_id"}`` of every acknowledged episode.
        retry_s: how long ``flush`` keeps retrying before it gives up (the episodes stay held).
        on_written: called with (table, episode id) after each acknowledgement.
    """

    def __init__(self, replay: ReplayClient, actor_id: str, audit_path: Path, retry_s: float,
                 on_written: Callable[[str, str], None] | None = None):
        self.replay = replay
        self.actor_id = actor_id
        self.audit_path = audit_path
        self.retry_s = retry_s
        self.on_written = on_written
        self._pending: deque[Pending] = deque()

    def __len__(self) -> int:
        return len(self._pending)

    def put(self, table: str, episode: Episode, priority: float) -> str:
        """Queue ``episode`` and flush; returns its id (acknowledged unless ``flush`` raised)."""
        self._pending.append(Pending(table, episode, priority))
        PENDING.labels(self.actor_id).set(len(self._pending))
        self.flush()
        return episode.episode_id

    def flush(self) -> None:
        """Write every held episode, oldest first, retrying transient failures for up to ``retry_s``.

        Raises:
            ReplayUnavailableError, ReplayTimeoutError: the replay still failed after ``retry_s``;
                the episodes not yet acknowledged stay held for the next flush.
            InvalidEpisodeError: an episode failed the replay's validation; it is dropped, never held.
        """
        deadline = time.monotonic() + self.retry_s
        delay = 0.05
        while self._pending:
            table, episode, priority = self._pending[0]
            try:
                self.replay.write_episode(table, episode, priority=priority)
            except InvalidEpisodeError:
                self._pending.popleft()
                PENDING.labels(self.actor_id).set(len(self._pending))
                raise
            except TRANSIENT as exc:
                if time.monotonic() + delay > deadline:
                    log.error("%s: %d episode(s) held, the replay still fails after %.0f s: %s",
                              self.actor_id, len(self._pending), self.retry_s, exc)
                    raise
                RETRIES.labels(self.actor_id).inc()
                log.warning("%s: writing %s failed (%s); retrying in %.2f s", self.actor_id, episode.episode_id,
                            type(exc).__name__, delay)
                time.sleep(delay)
                delay = min(2 * delay, MAX_BACKOFF_S)
                continue
            self._acknowledged(table, episode.episode_id)
            self._pending.popleft()
            PENDING.labels(self.actor_id).set(len(self._pending))
            delay = 0.05

    def _acknowledged(self, table: str, episode_id: str) -> None:
        with open(self.audit_path, "a") as audit:
            audit.write(json.dumps({"table": table, "episode_id": episode_id}) + "\n")
            audit.flush()
            os.fsync(audit.fileno())
        if self.on_written:
            self.on_written(table, episode_id)
