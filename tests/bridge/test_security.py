"""Bearer token and TLS of the robot bridge, as for the WeightService (protos/security.py)."""

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fleetloop.actors.bridge import BridgeError, BridgeUnavailable, MujocoTwinBackend, RobotBridgeServer, RobotClient
from fleetloop.actors.bridge.server import SERVICE_NAME
from fleetloop.protos.security import TlsConfig, open_channel
from tests.bridge.conftest import DEADLINE_S, metric

pytestmark = pytest.mark.timeout(60)


def _unauthenticated() -> tuple[float, float]:
    return (metric("fleetloop_bridge_rejected_total", reason="unauthenticated"),
            metric("fleetloop_bridge_requests_total", method="Reset", code="UNAUTHENTICATED"))


def test_token_required_wrong_token_refused_and_counted(serve):
    server, client = serve(token="s3cret", client={"token": "s3cret"})
    assert client.reset(seed=0)["arm_0"].step == 0
    before = _unauthenticated()
    for token in (None, "wrong"):
        with RobotClient(server.address, token=token, deadline_s=DEADLINE_S) as stranger:
            with pytest.raises(BridgeError) as info:
                stranger.reset(seed=0)
            assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    rejected, requests = _unauthenticated()
    assert (rejected, requests) == (before[0] + 2, before[1] + 2)
    with open_channel(server.address, []) as channel:  # probes need no token
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=DEADLINE_S).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert client.observe("arm_0").step == 0  # the refused resets did nothing


def test_undecodable_request_is_refused_and_counted(serve):
    server, client = serve(token="s3cret", client={"token": "s3cret"})
    before = metric("fleetloop_grpc_undecodable_requests_total", service="robot")
    with open_channel(server.address, [], token="s3cret") as channel:
        with pytest.raises(grpc.RpcError) as info:  # a field announcing 5 bytes and carrying 2
            channel.unary_unary(f"/{SERVICE_NAME}/Reset")(b"\x0a\x05ab", timeout=DEADLINE_S)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == "Exception deserializing request!"
    assert metric("fleetloop_grpc_undecodable_requests_total", service="robot") == before + 1
    assert client.reset(seed=0)["arm_0"].step == 0


def test_tls_with_token(serve, pki):
    server_tls = TlsConfig(cert_chain=pki["server"][0], private_key=pki["server"][1])
    client_tls = TlsConfig(ca_cert=pki["ca"][0])
    server, client = serve(tls=server_tls, token="s3cret", client={"tls": client_tls, "token": "s3cret"})
    obs = client.reset(seed=1, want_image=True)["arm_0"]
    assert obs.image.shape == (64, 64, 3)
    assert client.act(obs, np.tile(obs.state[:2], (2, 1))).executed_steps == 2
    for kwargs in ({"tls": TlsConfig(ca_cert=pki["other_ca"][0])}, {}):  # unknown CA; plaintext to a TLS port
        with RobotClient(server.address, token="s3cret", deadline_s=2.0, **kwargs) as stranger, \
                pytest.raises(BridgeUnavailable):
            stranger.info()
    with RobotClient(server.address, tls=client_tls, token="wrong", deadline_s=2.0) as stranger:
        with pytest.raises(BridgeError) as info:
            stranger.info()
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_config_files_give_a_working_tls_and_token_pair(pki, tmp_path):
    from fleetloop.config import load_config

    files = {"ca.pem": pki["ca"][0], "cert.pem": pki["server"][0], "key.pem": pki["server"][1], "token": b"s3cret\n"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    overrides = [f"bridge.tls_ca_file={tmp_path / 'ca.pem'}", f"bridge.tls_cert_file={tmp_path / 'cert.pem'}",
                 f"bridge.tls_key_file={tmp_path / 'key.pem'}", f"bridge.token_file={tmp_path / 'token'}",
                 "bridge.port=0", "bridge.deadline_s=2.5"]
    bridge = load_config("default", overrides).bridge
    tls, token = bridge.credentials()
    server = RobotBridgeServer(MujocoTwinBackend("reach"), port=bridge.port, tls=tls, token=token)
    server.start()
    try:
        with RobotClient.from_config(bridge, server.address) as client:
            assert client.deadline_s == 2.5 and client.reset(seed=0)["arm_0"].step == 0
    finally:
        server.stop(grace=None)
