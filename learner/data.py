"""Background prefetch of training batches from the replay, so the optimizer never waits."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

from fleetloop.replay.errors import EmptyReplayError, RateLimitedError, ReplayTimeoutError, ReplayUnavailableError

log = logging.getLogger(__name__)


class Prefetcher:
    """Produces training batches on a daemon thread, in order, ``depth`` ahead of the consumer.

    Args:
        produce: returns the next item (the learner's sample -> collate -> data-state step);
            raises EmptyReplayError while the replay has nothing to serve yet,
            ReplayUnavailableError/ReplayTimeoutError while it is unreachable, paused or restarting,
            and RateLimitedError while a table's rate limiter holds the learner back until the
            fleet inserts more (the seconds spent so are ``limited_s``).
        depth: items kept ready ahead of the consumer.
        retry_s: pause before producing again after one of those (the consumer's ``next`` timeout
            bounds how long an outage may last).
    """

    def __init__(self, produce: Callable[[], Any], depth: int, retry_s: float = 0.2):
        self._produce = produce
        self._retry_s = retry_s
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self.limited_s = 0.0
        """Seconds spent waiting on rate limiters (pacing by the fleet's inserts)."""
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                item = self._produce()
            except RateLimitedError:
                self.limited_s += time.monotonic() - start
                continue
            except EmptyReplayError:
                time.sleep(self._retry_s)
                continue
            except (ReplayUnavailableError, ReplayTimeoutError) as exc:
                log.warning("sampling failed (%s: %s); retrying", type(exc).__name__, exc)
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

    def next(self, timeout: float = 60.0) -> Any:
        """The next item; re-raises an error of the producing thread.

        Raises:
            TimeoutError: nothing within ``timeout`` seconds, not counting time the rate limiters
                held the producer back (pacing is not an outage).
        """
        deadline = time.monotonic() + timeout
        while True:
            limited = self.limited_s
            try:
                item = self._queue.get(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
                break
            except queue.Empty:
                deadline += self.limited_s - limited
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"no training batch within {timeout:.0f} s: is the replay empty or "
                                       "unreachable?") from None
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
