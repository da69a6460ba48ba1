"""Fixtures of the weight service suites: a started publisher and a factory of started subscribers."""

import threading

import pytest
import torch

from fleetloop.actors.subscriber import WeightSubscriber
from fleetloop.learner.publisher import WeightPublisher

WAIT_S = 10.0


class Recorder:
    """on_version callback that keeps every applied version."""

    def __init__(self):
        self.lock = threading.Lock()
        self.applied: list[tuple[int, dict[str, torch.Tensor]]] = []

    def __call__(self, version: int, tensors: dict[str, torch.Tensor]) -> None:
        with self.lock:
            self.applied.append((version, tensors))

    @property
    def versions(self) -> list[int]:
        with self.lock:
            return [version for version, _ in self.applied]


@pytest.fixture
def publisher(request):
    """A started WeightPublisher; a test module may set CHUNK_BYTES to change its chunk size."""
    pub = WeightPublisher(chunk_bytes=getattr(request.module, "CHUNK_BYTES", 4096), max_message_bytes=1 << 20)
    pub.start()
    yield pub
    pub.stop(grace=None)


@pytest.fixture
def subscribe():
    """Factory for started subscribers with fast reconnects; all are stopped at teardown."""
    subscribers = []

    def make(port: int, subscriber_id: str = "actor-0", **kwargs) -> tuple[WeightSubscriber, Recorder]:
        recorder = Recorder()
        sub = WeightSubscriber(f"127.0.0.1:{port}", subscriber_id, recorder, timeout_s=2.0, pull_timeout_s=10.0,
                               backoff_initial_s=0.05, backoff_max_s=0.3, **kwargs)
        sub.start()
        subscribers.append(sub)
        return sub, recorder

    yield make
    for sub in subscribers:
        sub.stop()
