"""Health checking, TLS (plain and mutual) and bearer tokens of the WeightService on 127.0.0.1."""


import re

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from fleetloop.actors.subscriber import WeightSubscriber
from fleetloop.learner.publisher import WeightPublisher
from fleetloop.protos import weights_pb2, weights_pb2_grpc
from fleetloop.limits import InputError
from fleetloop.protos.security import MAX_PEM_BYTES, TlsConfig, open_channel

pytestmark = pytest.mark.timeout(30)

DEADLINE_S = 5.0


def _serve(**kwargs) -> WeightPublisher:
    pub = WeightPublisher(chunk_bytes=1024, max_message_bytes=1 << 20, **kwargs)
    pub.start()
    pub.publish({"w": torch.arange(10.0)})
    return pub


def _pull_latest(port: int, **kwargs) -> int:
    """Version of the latest pull's trailer, over a channel opened like the subscriber's."""
    with open_channel(f"127.0.0.1:{port}", [], **kwargs) as channel:
        stub = weights_pb2_grpc.WeightServiceStub(channel)
        messages = list(stub.PullVersion(weights_pb2.PullRequest(subscriber_id="t"), timeout=DEADLINE_S))
    return messages[-1].trailer.version


def _code(port: int, **kwargs) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        _pull_latest(port, **kwargs)
    return info.value.code()


def _auth_failures() -> float:
    return REGISTRY.get_sample_value("fleetloop_grpc_auth_failures_total", {"service": "weights"}) or 0.0


def _health(port: int, service: str, **kwargs) -> int:
    with open_channel(f"127.0.0.1:{port}", [], **kwargs) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=DEADLINE_S).status


@pytest.mark.parametrize("service", ["", "fleetloop.weights.v1.WeightService"])
def test_health_is_serving_once_started_and_gone_after_stop(service):
    pub = _serve()
    port = pub.port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=DEADLINE_S)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=DEADLINE_S)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        pub.stop(grace=1.0)
        with pytest.raises(grpc.RpcError):  # the watch ends with the server, after any NOT_SERVING
            while next(watch).status != health_pb2.HealthCheckResponse.NOT_SERVING:
                pass
            next(watch)
    with pytest.raises(grpc.RpcError) as info:
        _health(port, service)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_token_required_and_counted():
    pub = _serve(token="s3cret")
    try:
        before = _auth_failures()
        assert _code(pub.port) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(pub.port, token="wrong") == grpc.StatusCode.UNAUTHENTICATED
        assert _auth_failures() == before + 2
        assert _pull_latest(pub.port, token="s3cret") == 1
        assert _health(pub.port, "") == health_pb2.HealthCheckResponse.SERVING  # probes need no token
        assert _auth_failures() == before + 2
    finally:
        pub.stop(grace=None)


def test_tls_with_token(pki):
    server_tls = TlsConfig(cert_chain=pki["server"][0], private_key=pki["server"][1])
    pub = _serve(tls=server_tls, token="s3cret")
    try:
        good = TlsConfig(ca_cert=pki["ca"][0])
        assert _pull_latest(pub.port, tls=good, token="s3cret") == 1
        assert _code(pub.port, tls=TlsConfig(ca_cert=pki["other_ca"][0]), token="s3cret") == grpc.StatusCode.UNAVAILABLE
        assert _code(pub.port, token="s3cret") == grpc.StatusCode.UNAVAILABLE  # plaintext to a TLS port
        before = _auth_failures()
        assert _code(pub.port, tls=good, token="wrong") == grpc.StatusCode.UNAUTHENTICATED
        assert _auth_failures() == before + 1
    finally:
        pub.stop(grace=None)


def test_mutual_tls_needs_a_client_certificate(pki):
    server_tls = TlsConfig(ca_cert=pki["ca"][0], cert_chain=pki["server"][0], private_key=pki["server"][1],
                           require_client_auth=True)
    pub = _serve(tls=server_tls)
    try:
        assert _code(pub.port, tls=TlsConfig(ca_cert=pki["ca"][0])) == grpc.StatusCode.UNAVAILABLE
        client_tls = TlsConfig(ca_cert=pki["ca"][0], cert_chain=pki["client"][0], private_key=pki["client"][1])
        assert _pull_latest(pub.port, tls=client_tls) == 1
    finally:
        pub.stop(grace=None)


def test_subscriber_over_mutual_tls_with_token(pki):
    server_tls = TlsConfig(ca_cert=pki["ca"][0], cert_chain=pki["server"][0], private_key=pki["server"][1],
                           require_client_auth=True)
    pub = _serve(tls=server_tls, token="s3cret")
    client_tls = TlsConfig(ca_cert=pki["ca"][0], cert_chain=pki["client"][0], private_key=pki["client"][1],
                           server_name="localhost")
    received = []
    sub = WeightSubscriber(f"127.0.0.1:{pub.port}", "actor-tls", lambda v, t: received.append((v, t)),
                           timeout_s=2.0, tls=client_tls, token="s3cret")
    sub.start()
    try:
        assert sub.wait_for_version(1, DEADLINE_S)
        assert torch.equal(received[0][1]["w"], torch.arange(10.0))
    finally:
        sub.stop()
        pub.stop(grace=None)


def test_incomplete_server_tls_is_refused_at_construction():
    with pytest.raises(ValueError, match="cert_chain and private_key"):
        WeightPublisher(tls=TlsConfig(ca_cert=b"x"))


def test_config_files_give_a_working_mutual_tls_and_token_pair(pki, tmp_path):
    from fleetloop.config import ConfigError, load_config

    files = {"ca.pem": pki["ca"][0], "cert.pem": pki["server"][0], "key.pem": pki["server"][1], "token": b"s3cret\n"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    overrides = [f"weights.tls_ca_file={tmp_path / 'ca.pem'}", f"weights.tls_cert_file={tmp_path / 'cert.pem'}",
                 f"weights.tls_key_file={tmp_path / 'key.pem'}", "weights.tls_require_client_auth=true",
                 f"weights.token_file={tmp_path / 'token'}"]
    tls, token = load_config("smoke", overrides).weights.credentials()
    assert token == "s3cret" and tls.require_client_auth and tls.ca_cert == pki["ca"][0]

    pub = _serve(tls=tls, token=token)
    try:
        assert _pull_latest(pub.port, tls=tls, token=token) == 1
        assert _code(pub.port, tls=tls, token="wrong") == grpc.StatusCode.UNAUTHENTICATED
    finally:
        pub.stop(grace=0)

    with pytest.raises(ConfigError, match=r"missing \['tls_key_file'\]"):
        load_config("smoke", overrides[:2])
    with pytest.raises(ConfigError, match="token_file: .* is not a readable file"):
        load_config("smoke", [f"weights.token_file={tmp_path / 'absent'}"])


def test_pem_file_over_the_limit_is_refused(pki, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki["ca"][0].ljust(MAX_PEM_BYTES, b"\n"))
    assert TlsConfig.from_files(ca).ca_cert.strip() == pki["ca"][0].strip()
    ca.write_bytes(pki["ca"][0].ljust(MAX_PEM_BYTES + 1, b"\n"))
    words = f"{ca}: {MAX_PEM_BYTES + 1} bytes exceed the limit of {MAX_PEM_BYTES} bytes for this file"
    with pytest.raises(InputError, match=re.escape(words)):
        TlsConfig.from_files(ca)
