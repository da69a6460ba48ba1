"""Delta pulls (only changed tensors travel) and resumption of interrupted pulls, on 127.0.0.1."""

from concurrent import futures

import grpc
import pytest
import torch
from prometheus_client import REGISTRY

from fleetloop.learner.publisher import WeightPublisher, WeightServicer, add_servicer_to_server
from fleetloop.protos import weights_pb2, weights_pb2_grpc
from tests.weights.conftest import WAIT_S
from tests.weights.test_subscriber import _assert_equal, _parsed

pytestmark = pytest.mark.timeout(30)


def _bytes_sent() -> float:
    return REGISTRY.get_sample_value("fleetloop_weights_bytes_sent_total") or 0.0


def _model(trainable_seed: int) -> dict[str, torch.Tensor]:
    """Half frozen (same every version), half trainable (new values per seed)."""
    frozen = torch.Generator().manual_seed(0)
    trainable = torch.Generator().manual_seed(trainable_seed)
    return {
        "frozen.a": torch.randn(64, 32, generator=frozen),
        "frozen.b": torch.randn(500, generator=frozen).to(torch.bfloat16),
        "train.a": torch.randn(64, 32, generator=trainable),
        "train.b": torch.randn(500, generator=trainable).to(torch.bfloat16),
        "frozen.empty": torch.empty(0, 3),
    }


def _nbytes(state_dict: dict[str, torch.Tensor], prefix: str = "") -> int:
    return sum(t.numel() * t.element_size() for name, t in state_dict.items() if name.startswith(prefix))


def test_delta_pull_sends_only_changed_tensors(publisher, subscribe):
    sub, recorder = subscribe(publisher.port)
    publisher.publish(_model(1))
    assert sub.wait_for_version(1, WAIT_S)
    before = _bytes_sent()
    publisher.publish(_model(2))
    assert sub.wait_for_version(2, WAIT_S)
    assert _bytes_sent() - before == _nbytes(_model(2), "train.")
    _assert_equal(recorder.applied[-1][1], _model(2))


def test_raw_delta_manifest_marks_unchanged_tensors(publisher):
    publisher.publish(_model(1))
    publisher.publish(_model(2))
    with grpc.insecure_channel(f"127.0.0.1:{publisher.port}") as channel:
        stub = weights_pb2_grpc.WeightServiceStub(channel)
        request = weights_pb2.PullRequest(subscriber_id="t", version=2, base_version=1)
        messages = list(stub.PullVersion(request, timeout=WAIT_S))
        evicted_base = weights_pb2.PullRequest(subscriber_id="t", version=2, base_version=7)
        full = list(stub.PullVersion(evicted_base, timeout=WAIT_S))
    manifest = messages[0].manifest
    assert manifest.base_version == 1
    assert [manifest.tensors[i].name for i in manifest.from_base] == ["frozen.a", "frozen.b", "frozen.empty"]
    assert {m.tensor_chunk.tensor_index for m in messages[1:-1]} == {2, 3}
    assert full[0].manifest.base_version == 0 and not full[0].manifest.from_base
    assert {m.tensor_chunk.tensor_index for m in full[1:-1]} == {0, 1, 2, 3}


def test_evicted_base_gets_a_full_version(subscribe):
    pub = WeightPublisher(chunk_bytes=4096, keep_versions=1)
    pub.start()
    try:
        sub, recorder = subscribe(pub.port)
        pub.publish(_model(1))
        assert sub.wait_for_version(1, WAIT_S)
        sub.stop()  # offline while version 2 replaces version 1
        pub.publish(_model(2))
        before = _bytes_sent()
        sub.start()
        assert sub.wait_for_version(2, WAIT_S)
        assert _bytes_sent() - before == _nbytes(_model(2))
        _assert_equal(recorder.applied[-1][1], _model(2))
    finally:
        pub.stop(grace=None)


class CuttingServicer(WeightServicer):
    """The real servicer, except that the first pull of each version breaks off after ``cut_after`` tensors."""

    def __init__(self, publisher: WeightPublisher, cut_after: int):
        super().__init__(publisher)
        self.cut_after = cut_after
        self.requests: list[weights_pb2.PullRequest] = []

    def PullVersion(self, request, context):
        self.requests.append(request)
        first_pull = sum(r.version == request.version for r in self.requests) == 1
        completed, sizes = set(), []
        for message in _parsed(super().PullVersion(request, context)):
            if message.WhichOneof("kind") == "manifest":
                sizes = [meta.nbytes for meta in message.manifest.tensors]
            if message.WhichOneof("kind") == "tensor_chunk":
                chunk = message.tensor_chunk
                if first_pull and len(completed) >= self.cut_after and chunk.tensor_index not in completed:
                    context.abort(grpc.StatusCode.UNAVAILABLE, "connection lost mid-stream")
                if chunk.offset + len(chunk.data) == sizes[chunk.tensor_index]:
                    completed.add(chunk.tensor_index)
            yield message


def test_interrupted_pull_resumes_with_the_missing_tensors(subscribe):
    state_dict = {f"layer{i}.weight": torch.randn(32, 32) for i in range(4)}
    pub = WeightPublisher(chunk_bytes=1024)
    servicer = CuttingServicer(pub, cut_after=2)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    add_servicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        before = _bytes_sent()
        sub, recorder = subscribe(port)
        pub.publish(state_dict)
        assert sub.wait_for_version(1, WAIT_S)
        _assert_equal(recorder.applied[-1][1], state_dict)
        assert recorder.versions == [1]
        first, retry = servicer.requests
        assert (list(first.have_tensors), list(retry.have_tensors)) == ([], [0, 1])
        # the 2 tensors completed before the cut, then only the 2 missing ones: each tensor once
        assert _bytes_sent() - before == _nbytes(state_dict)
    finally:
        server.stop(None)
