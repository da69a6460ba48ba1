"""Limits of the WeightService on 127.0.0.1: subscriber ids, remembered subscribers and request bytes
that do not parse, each refused with its status and counted."""

import grpc
import pytest
import torch
from prometheus_client import REGISTRY

from fleetloop.actors.subscriber import WeightSubscriber
from fleetloop.learner import publisher as publisher_module
from fleetloop.learner.publisher import MAX_SUBSCRIBER_ID_CHARS, WeightPublisher
from fleetloop.protos import weights_pb2, weights_pb2_grpc

pytestmark = pytest.mark.timeout(30)

DEADLINE_S = 5.0
UNDECODABLE = b"\x0a\x05ab"
"""A subscriber_id field announcing 5 bytes and carrying 2: no request message parses it."""


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _call(stub: weights_pb2_grpc.WeightServiceStub, method: str, subscriber_id: str):
    """Call ``method`` with ``subscriber_id``, reading a stream's first message."""
    if method == "WatchVersions":
        return next(stub.WatchVersions(weights_pb2.WatchRequest(subscriber_id=subscriber_id), timeout=DEADLINE_S))
    if method == "PullVersion":
        return next(stub.PullVersion(weights_pb2.PullRequest(subscriber_id=subscriber_id), timeout=DEADLINE_S))
    return stub.ReportApplied(weights_pb2.AppliedReport(subscriber_id=subscriber_id, version=1), timeout=DEADLINE_S)


@pytest.fixture
def stub(publisher):
    publisher.publish({"w": torch.ones(4)})
    with grpc.insecure_channel(f"127.0.0.1:{publisher.port}") as channel:
        yield weights_pb2_grpc.WeightServiceStub(channel)


@pytest.mark.parametrize("method", ["WatchVersions", "PullVersion", "ReportApplied"])
def test_subscriber_id_over_the_limit_is_refused_and_counted(publisher, stub, method):
    longest = "s" * MAX_SUBSCRIBER_ID_CHARS
    assert _call(stub, method, longest) is not None
    before = _sample("fleetloop_weights_requests_rejected_total", reason="invalid_argument")
    with pytest.raises(grpc.RpcError) as info:
        _call(stub, method, longest + "s")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == f"subscriber_id of 257 characters exceeds the limit of {MAX_SUBSCRIBER_ID_CHARS}"
    assert _sample("fleetloop_weights_requests_rejected_total", reason="invalid_argument") == before + 1
    assert longest + "s" not in publisher.applied_versions()


def test_report_of_a_version_never_published_is_refused_and_counted(publisher, stub):
    before = _sample("fleetloop_weights_requests_rejected_total", reason="invalid_argument")
    with pytest.raises(grpc.RpcError) as info:
        stub.ReportApplied(weights_pb2.AppliedReport(subscriber_id="a", version=2), timeout=DEADLINE_S)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "version 2 was never published (latest: 1)"
    assert _sample("fleetloop_weights_requests_rejected_total", reason="invalid_argument") == before + 1
    assert publisher.applied_versions() == {}


def test_a_subscriber_refuses_an_id_the_service_would_refuse():
    with pytest.raises(ValueError, match=f"subscriber_id must have 1 to {MAX_SUBSCRIBER_ID_CHARS} characters, got 257"):
        WeightSubscriber("127.0.0.1:1", "s" * (MAX_SUBSCRIBER_ID_CHARS + 1), on_version=lambda *_: None)


def test_applied_reports_keep_the_newest_subscribers(publisher, stub, monkeypatch):
    monkeypatch.setattr(publisher_module, "MAX_SUBSCRIBERS", 3)
    for subscriber in ("a", "b", "c", "a", "d"):
        _call(stub, "ReportApplied", subscriber)
    assert list(publisher.applied_versions()) == ["c", "a", "d"]  # b reported longest ago
    assert publisher.active_subscribers() == 3


@pytest.mark.parametrize("token", [None, "s3cret"], ids=["open", "token"])
@pytest.mark.parametrize("method", ["WatchVersions", "PullVersion", "ReportApplied"])
def test_undecodable_request_is_refused_and_counted(method, token):
    pub = WeightPublisher(chunk_bytes=1024, max_message_bytes=1 << 20, token=token)
    pub.start()
    pub.publish({"w": torch.ones(4)})
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    path = f"/{publisher_module.SERVICE_NAME}/{method}"
    try:
        with grpc.insecure_channel(f"127.0.0.1:{pub.port}") as channel:
            before = _sample("fleetloop_grpc_undecodable_requests_total", service="weights")
            with pytest.raises(grpc.RpcError) as info:
                if method == "ReportApplied":
                    channel.unary_unary(path)(UNDECODABLE, timeout=DEADLINE_S, metadata=metadata)
                else:
                    next(channel.unary_stream(path)(UNDECODABLE, timeout=DEADLINE_S, metadata=metadata))
            assert info.value.code() == grpc.StatusCode.INTERNAL
            assert info.value.details() == "Exception deserializing request!"
            assert _sample("fleetloop_grpc_undecodable_requests_total", service="weights") == before + 1
            assert pub.applied_versions() == {}
    finally:
        pub.stop(grace=None)
