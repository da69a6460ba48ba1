"""WeightPublisher against a raw gRPC client on 127.0.0.1: versions, chunking, eviction, reports."""

import socket
import threading
import time

import grpc
import pytest
import torch
from prometheus_client import REGISTRY

from fleetloop.learner.publisher import WeightPublisher
from fleetloop.protos import codec, weights_pb2, weights_pb2_grpc

pytestmark = pytest.mark.timeout(30)

DEADLINE_S = 5.0
CHUNK_BYTES = 1024
"""Chunk size of this module's `publisher` fixture (tests/weights/conftest.py)."""


@pytest.fixture
def stub(publisher):
    with grpc.insecure_channel(f"127.0.0.1:{publisher.port}") as channel:
        yield weights_pb2_grpc.WeightServiceStub(channel)


def _rejected(reason: str) -> float:
    return REGISTRY.get_sample_value("fleetloop_weights_requests_rejected_total", {"reason": reason}) or 0.0


def _pull(stub, version: int) -> list[weights_pb2.WeightChunk]:
    return list(stub.PullVersion(weights_pb2.PullRequest(subscriber_id="t", version=version), timeout=DEADLINE_S))


def test_port_in_use_raises_naming_the_address(publisher):
    with pytest.raises(OSError, match=f"127.0.0.1:{publisher.port}.*in use"):
        WeightPublisher(port=publisher.port).start()


def test_port_held_by_another_socket_raises():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            WeightPublisher(port=port).start()


@pytest.mark.parametrize(("version", "message"), [(1, "must increase"), (2, "must increase"), (0, ">= 1")],
                         ids=["lower", "equal", "zero"])
def test_publish_rejects_non_increasing_version(version, message):
    pub = WeightPublisher()
    assert pub.publish({"w": torch.ones(1)}, version=2) == 2
    with pytest.raises(ValueError, match=message):
        pub.publish({"w": torch.ones(1)}, version=version)
    assert pub.latest_version == 2
    assert pub.publish({"w": torch.ones(1)}) == 3


def test_pull_streams_manifest_chunks_and_trailer(publisher, stub):
    state_dict = {"big": torch.arange(2500, dtype=torch.float32), "small": torch.tensor([1, 2], dtype=torch.int64)}
    publisher.publish(state_dict)
    messages = _pull(stub, 0)

    kinds = [m.WhichOneof("kind") for m in messages]
    assert kinds[0] == "manifest" and kinds[-1] == "trailer"
    assert set(kinds[1:-1]) == {"tensor_chunk"}
    manifest, trailer = messages[0].manifest, messages[-1].trailer
    assert manifest.version == trailer.version == 1
    assert manifest.total_bytes == 10_016
    assert trailer.manifest_sha256 == codec.manifest_sha256(1, manifest.tensors)

    chunks = [m.tensor_chunk for m in messages[1:-1]]
    assert all(len(c.data) <= 1024 for c in chunks)
    assert [c.offset for c in chunks if c.tensor_index == 0] == list(range(0, 10_000, 1024))
    for index, meta in enumerate(manifest.tensors):
        data = b"".join(c.data for c in chunks if c.tensor_index == index)
        assert torch.equal(codec.decode_tensor(meta, data), state_dict[meta.name])


def test_published_version_is_a_snapshot(publisher, stub):
    weights = torch.zeros(8)
    publisher.publish({"w": weights})
    weights.add_(1)
    messages = _pull(stub, 1)
    meta = messages[0].manifest.tensors[0]
    assert torch.equal(codec.decode_tensor(meta, messages[1].tensor_chunk.data), torch.zeros(8))


def test_evicted_version_is_not_found(publisher, stub):
    for _ in range(3):
        publisher.publish({"w": torch.ones(2)})
    assert publisher.held_versions() == [2, 3]
    before = _rejected("version_not_held")
    with pytest.raises(grpc.RpcError) as info:
        _pull(stub, 1)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "version 1 is not held" in info.value.details()
    assert _rejected("version_not_held") == before + 1
    assert _pull(stub, 2)[0].manifest.version == 2


def test_pull_latest_before_any_publish_is_not_found(stub):
    with pytest.raises(grpc.RpcError) as info:
        _pull(stub, 0)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_watch_sends_latest_at_once_then_each_new_version(publisher, stub):
    publisher.publish({"w": torch.ones(1)})
    publisher.publish({"w": torch.ones(1)})
    stream = stub.WatchVersions(weights_pb2.WatchRequest(subscriber_id="t", known_version=0), timeout=DEADLINE_S)
    first = next(stream)
    assert (first.version, first.num_tensors, first.total_bytes) == (2, 1, 4)
    publisher.publish({"w": torch.ones(1)})
    assert next(stream).version == 3
    stream.cancel()

    up_to_date = stub.WatchVersions(weights_pb2.WatchRequest(subscriber_id="t", known_version=3), timeout=0.5)
    with pytest.raises(grpc.RpcError) as info:
        next(up_to_date)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_abandoned_streams_do_not_block_publish(publisher, stub):
    publisher.publish({"w": torch.randn(1 << 20)})
    abandoned = []
    for _ in range(4):
        watch = stub.WatchVersions(weights_pb2.WatchRequest(subscriber_id="dead", known_version=0))
        next(watch)
        pull = stub.PullVersion(weights_pb2.PullRequest(subscriber_id="dead", version=1))
        next(pull)  # 4 MiB pending in 1 KiB chunks: the server's sender is stuck on flow control
        abandoned += [watch, pull]

    for version in range(2, 6):
        started = time.monotonic()
        publisher.publish({"w": torch.randn(1 << 20)})
        assert time.monotonic() - started < 1.0, f"publish of version {version} was blocked"
    live = stub.WatchVersions(weights_pb2.WatchRequest(subscriber_id="live", known_version=1), timeout=DEADLINE_S)
    assert next(live).version == 5
    assert _pull(stub, 5)[-1].trailer.version == 5
    for call in abandoned + [live]:
        call.cancel()


def test_watchers_beyond_limit_are_told_to_retry():
    pub = WeightPublisher(max_watchers=1, pull_workers=1)
    pub.start()
    try:
        pub.publish({"w": torch.ones(1)})
        with grpc.insecure_channel(f"127.0.0.1:{pub.port}") as channel:
            stub = weights_pb2_grpc.WeightServiceStub(channel)
            first = stub.WatchVersions(weights_pb2.WatchRequest(subscriber_id="a"), timeout=DEADLINE_S)
            next(first)
            before = _rejected("watch_limit")
            with pytest.raises(grpc.RpcError) as info:
                next(stub.WatchVersions(weights_pb2.WatchRequest(subscriber_id="b"), timeout=DEADLINE_S))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert _rejected("watch_limit") == before + 1
            assert _pull(stub, 1)[-1].trailer.version == 1
            first.cancel()
    finally:
        pub.stop(grace=None)


def test_reports_count_subscribers_and_propagation(publisher, stub):
    propagation_before = REGISTRY.get_sample_value("fleetloop_weights_propagation_seconds_count") or 0.0
    publisher.publish({"w": torch.ones(1)})
    for subscriber in ("a", "b"):
        stub.ReportApplied(weights_pb2.AppliedReport(subscriber_id=subscriber, version=1), timeout=DEADLINE_S)
    stub.ReportApplied(weights_pb2.AppliedReport(subscriber_id="a", version=1), timeout=DEADLINE_S)
    assert publisher.applied_versions() == {"a": 1, "b": 1}
    assert publisher.active_subscribers() == 2
    assert REGISTRY.get_sample_value("fleetloop_weights_subscribers") == 2
    assert REGISTRY.get_sample_value("fleetloop_weights_propagation_seconds_count") == propagation_before + 2
    assert REGISTRY.get_sample_value("fleetloop_weights_version_published") == 1

    before = _rejected("invalid_argument")
    with pytest.raises(grpc.RpcError) as info:
        stub.ReportApplied(weights_pb2.AppliedReport(subscriber_id="", version=1), timeout=DEADLINE_S)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _rejected("invalid_argument") == before + 1


def test_bytes_sent_are_counted(publisher, stub):
    before = REGISTRY.get_sample_value("fleetloop_weights_bytes_sent_total") or 0.0
    publisher.publish({"w": torch.ones(1000)})
    _pull(stub, 1)
    assert REGISTRY.get_sample_value("fleetloop_weights_bytes_sent_total") == before + 4000


def test_concurrent_publishes_get_distinct_rising_versions():
    pub = WeightPublisher(keep_versions=3)
    versions = []
    lock = threading.Lock()

    def publish_some():
        for _ in range(10):
            version = pub.publish({"w": torch.ones(4)})
            with lock:
                versions.append(version)

    threads = [threading.Thread(target=publish_some) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S)
    assert sorted(versions) == list(range(1, 41))
    assert pub.held_versions() == [38, 39, 40]
