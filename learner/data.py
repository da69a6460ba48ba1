"""Background prefetch of training batches from the replay, so the optimizer never waits."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

from fleetloop.replay.errors import EmptyReplayError

log = logging.getLogger(__name__)


class Prefetcher:
    """Samples windows and collates them into batches on a daemon thread.

    Args:
        sample: ``sample(batch_size) -> list[window dict]`` (a replay WindowSampler's method).
        collate: turns a list of windows into model tensors (system Processor.collate).
        batch_size: windows per batch.
        depth: batches kept ready ahead of the consumer.
        retry_s: pause before sampling again when the replay has nothing to serve yet.
    """

    def __init__(self, sample: Callable[[int], list[dict]], collate: Callable[[list[dict]], dict],
                 batch_size: int, depth: int, retry_s: float = 0.2):
        self._sample = sample
        self._collate = collate
        self._batch_size = batch_size
        self._retry_s = retry_s
        self._queue: queue.Queue[tuple[dict[str, Any], list[dict]] | BaseException] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                windows = self._sample(self._batch_size)
                item: Any = (self._collate(windows), windows)
            except EmptyReplayError:
                time.sleep(self._retry_s)
                continue
            except BaseException as exc:  # handed to the consumer, which re-raises it
                item = exc
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def next(self, timeout: float = 60.0) -> tuple[dict[str, Any], list[dict]]:
        """The next (batch, windows) pair; re-raises an error of the sampling thread."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no training batch within {timeout:.0f} s: is the replay empty or unreachable?") from None
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
