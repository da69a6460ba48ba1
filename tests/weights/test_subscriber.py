"""WeightSubscriber end to end against real WeightService servers on 127.0.0.1."""

import time
from concurrent import futures

import grpc
import pytest
import torch
from prometheus_client import REGISTRY

from fleetloop.actors.subscriber import WeightSubscriber
from fleetloop.learner.publisher import WeightPublisher, WeightServicer, add_servicer_to_server
from tests.weights.conftest import WAIT_S
from fleetloop.protos import weights_pb2

pytestmark = pytest.mark.timeout(30)


def _state_dict(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "encoder.weight": torch.randn(16, 8, generator=gen).to(torch.bfloat16),
        "encoder.bias": torch.randn(16, generator=gen),
        "head.weight": torch.randn(4, 16, generator=gen).to(torch.float16),
        "steps": torch.tensor([seed], dtype=torch.int64),
        "mask": torch.rand(5, generator=gen) > 0.5,
    }


def _assert_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name], tensor), name


def _wait_until(predicate, timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_subscriber_receives_exact_tensors_and_reports(publisher, subscribe):
    sub, recorder = subscribe(publisher.port)
    state_dict = _state_dict(1)
    publisher.publish(state_dict)
    assert sub.wait_for_version(1, WAIT_S)
    [(version, tensors)] = recorder.applied
    assert version == sub.applied_version == 1
    _assert_equal(tensors, state_dict)
    assert _wait_until(lambda: publisher.applied_versions() == {"actor-0": 1})


def test_versions_applied_only_increase(publisher, subscribe):
    sub, recorder = subscribe(publisher.port)
    for seed in range(1, 8):
        publisher.publish(_state_dict(seed))
        time.sleep(0.01)
    assert sub.wait_for_version(7, WAIT_S)
    versions = recorder.versions
    assert versions == sorted(set(versions)) and versions[-1] == 7
    _assert_equal(recorder.applied[-1][1], _state_dict(7))


def test_tensors_larger_than_chunk_bytes(publisher, subscribe):
    sub, recorder = subscribe(publisher.port)
    state_dict = {"big": torch.randn(300, 100), "big_bf16": torch.randn(50_000).to(torch.bfloat16),
                  "tiny": torch.ones(1)}
    publisher.publish(state_dict)
    assert sub.wait_for_version(1, WAIT_S)
    _assert_equal(recorder.applied[0][1], state_dict)


def test_sixteen_concurrent_subscribers_get_version_2(publisher, subscribe):
    subs = [subscribe(publisher.port, f"actor-{i}") for i in range(16)]
    publisher.publish(_state_dict(1))
    publisher.publish(_state_dict(2))
    for sub, recorder in subs:
        assert sub.wait_for_version(2, WAIT_S), sub.subscriber_id
        _assert_equal(recorder.applied[-1][1], _state_dict(2))
    expected = {f"actor-{i}": 2 for i in range(16)}
    assert _wait_until(lambda: publisher.applied_versions() == expected)


def test_late_subscriber_gets_only_the_latest(publisher, subscribe):
    for seed in (1, 2, 3):
        publisher.publish(_state_dict(seed))
    sub, recorder = subscribe(publisher.port)
    assert sub.wait_for_version(3, WAIT_S)
    assert recorder.versions == [3]


def test_known_version_is_not_pulled_again(publisher, subscribe):
    publisher.publish(_state_dict(1))
    sub, recorder = subscribe(publisher.port, known_version=1)
    publisher.publish(_state_dict(2))
    assert sub.wait_for_version(2, WAIT_S)
    assert recorder.versions == [2]


def _parsed(messages):
    """The servicer's PullVersion stream as WeightChunk messages (tensor chunks come pre-serialized)."""
    for message in messages:
        yield weights_pb2.WeightChunk.FromString(message) if isinstance(message, bytes) else message


class FaultyServicer(WeightServicer):
    """The real servicer, except that from version 2 on it damages the pull stream as ``fault`` says."""

    def __init__(self, publisher: WeightPublisher, fault: str):
        super().__init__(publisher)
        self.fault = fault

    def PullVersion(self, request, context):
        damaged = False
        for message in _parsed(super().PullVersion(request, context)):
            if message.WhichOneof("kind") == "tensor_chunk" and request.version >= 2 and not damaged:
                damaged = True
                if self.fault == "flip_byte":
                    data = bytearray(message.tensor_chunk.data)
                    data[0] ^= 0xFF
                    message.tensor_chunk.data = bytes(data)
                elif self.fault == "drop_chunk":
                    continue
                elif self.fault == "cut_off":
                    context.abort(grpc.StatusCode.UNAVAILABLE, "connection lost mid-stream")
            yield message


@pytest.mark.parametrize(("fault", "reason"), [("flip_byte", "checksum"), ("drop_chunk", "size"),
                                                ("cut_off", "truncated")])
def test_damaged_version_is_rejected_and_old_one_kept(subscribe, fault, reason):
    pub = WeightPublisher(chunk_bytes=64)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    add_servicer_to_server(FaultyServicer(pub, fault), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        def rejected() -> float:
            return REGISTRY.get_sample_value("fleetloop_weights_rejected_total", {"reason": reason}) or 0.0

        sub, recorder = subscribe(port)
        pub.publish(_state_dict(1))
        assert sub.wait_for_version(1, WAIT_S)
        before = rejected()
        pub.publish(_state_dict(2))
        assert _wait_until(lambda: rejected() >= before + 1)
        assert not sub.wait_for_version(2, 0.3)
        assert (sub.applied_version, sub.latest_announced) == (1, 2)
        assert recorder.versions == [1]
        _assert_equal(recorder.applied[0][1], _state_dict(1))
    finally:
        server.stop(None)


def test_reconnects_after_server_restart(subscribe):
    first = WeightPublisher()
    port = first.start()
    sub, recorder = subscribe(port)
    first.publish(_state_dict(1))
    assert sub.wait_for_version(1, WAIT_S)
    first.stop(grace=None)

    second = WeightPublisher(port=port)
    try:
        time.sleep(0.3)  # the subscriber sees the server gone and starts backing off
        assert second.start() == port
        second.publish(_state_dict(2), version=2)
        assert sub.wait_for_version(2, WAIT_S)
        assert recorder.versions == [1, 2]
        _assert_equal(recorder.applied[-1][1], _state_dict(2))
    finally:
        second.stop(grace=None)


def test_subscriber_waits_for_a_server_that_is_not_up_yet(subscribe):
    pub = WeightPublisher()
    port = pub.start()
    pub.stop(grace=None)
    sub, _ = subscribe(port)
    time.sleep(0.3)
    restarted = WeightPublisher(port=port)
    restarted.start()
    try:
        restarted.publish(_state_dict(1))
        assert sub.wait_for_version(1, WAIT_S)
    finally:
        restarted.stop(grace=None)


def test_failing_on_version_keeps_old_version(publisher, subscribe):
    calls = []

    def on_version(version, tensors):
        calls.append(version)
        if version == 2:
            raise RuntimeError("apply failed")

    sub = WeightSubscriber(f"127.0.0.1:{publisher.port}", "actor-x", on_version, timeout_s=2.0)
    sub.start()
    try:
        publisher.publish(_state_dict(1))
        assert sub.wait_for_version(1, WAIT_S)
        publisher.publish(_state_dict(2))
        assert _wait_until(lambda: calls == [1, 2])
        publisher.publish(_state_dict(3))
        assert sub.wait_for_version(3, WAIT_S)
        assert calls == [1, 2, 3]
    finally:
        sub.stop()


def test_stop_returns_promptly_while_watching(publisher, subscribe):
    sub = WeightSubscriber(f"127.0.0.1:{publisher.port}", "actor-s", lambda v, t: None)
    sub.start()
    time.sleep(0.2)
    started = time.monotonic()
    sub.stop()
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"subscriber_id": ""}, "subscriber_id"),
    ({"known_version": -1}, "known_version"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"backoff_initial_s": 2.0, "backoff_max_s": 1.0}, "backoff"),
])
def test_invalid_arguments_are_named(kwargs, message):
    args = {"target": "127.0.0.1:1", "subscriber_id": "a", "on_version": lambda v, t: None} | kwargs
    with pytest.raises(ValueError, match=message):
        WeightSubscriber(**args)


def test_a_subscriber_handed_to_a_component_gets_its_receiver_before_it_starts(publisher):
    """Built without ``on_version`` (the component it is handed to binds its policy), a subscriber
    refuses to start until something receives the versions, then delivers to what was bound."""
    publisher.publish(_state_dict(1))
    subscriber = WeightSubscriber(f"127.0.0.1:{publisher.port}", "handed-over")
    with pytest.raises(RuntimeError, match="no on_version: set it"):
        subscriber.start()
    received = []
    subscriber.on_version = lambda version, tensors: received.append((version, tensors))
    subscriber.start()
    try:
        assert subscriber.wait_for_version(1, WAIT_S)
        assert received[0][0] == 1
        _assert_equal(received[0][1], _state_dict(1))
    finally:
        subscriber.stop()
