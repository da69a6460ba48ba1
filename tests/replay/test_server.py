"""EmbeddedValkey: lifecycle, reuse via server.json, AOF persistence, port conflicts."""

import json
import socket

import pytest

from fleetloop.replay import EmbeddedValkey, PortInUseError, ReplayClient, ServerStartError


def test_start_writes_server_file_and_stop_removes_it(tmp_path):
    data_dir = tmp_path / "replay"
    server = EmbeddedValkey(data_dir).start()
    try:
        info = json.loads((data_dir / "server.json").read_text())
        assert info == {"pid": server.pid, "port": server.port, "host": "127.0.0.1"}
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert EmbeddedValkey.running_in(data_dir) == server.url
    finally:
        server.stop()
    assert not (data_dir / "server.json").exists()
    assert EmbeddedValkey.running_in(data_dir) is None
    assert (data_dir / "valkey.log").exists()


def test_running_in_ignores_stale_server_file(tmp_path):
    tmp_path.joinpath("server.json").write_text(
        json.dumps({"pid": 2**22 + 12345, "port": 1, "host": "127.0.0.1"})
    )
    assert EmbeddedValkey.running_in(tmp_path) is None


def test_second_server_for_same_dir_is_refused(valkey):
    with pytest.raises(ServerStartError, match="already running"):
        EmbeddedValkey(valkey.data_dir).start()


def test_port_in_use_names_host_port(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        match = rf"127\.0\.0\.1:{port} is already in use.*another port"
        with pytest.raises(PortInUseError, match=match):
            EmbeddedValkey(tmp_path, port=port).start()
    assert not (tmp_path / "server.json").exists()


def test_data_survives_restart(tmp_path, make_episode):
    data_dir = tmp_path / "replay"
    episodes = [make_episode(length=4 + i, frame_steps=(0, 2)) for i in range(3)]
    with EmbeddedValkey(data_dir) as server, ReplayClient(server.url) as client:
        for ep in episodes:
            client.write_episode("rollouts", ep)
        before = client.table_stats()
    with EmbeddedValkey(data_dir) as server, ReplayClient(server.url) as client:
        assert client.episode_ids("rollouts") == [ep.episode_id for ep in episodes]
        assert client.table_stats() == before
        restored = client.read_episode(episodes[1].episode_id)
    assert (restored.states == episodes[1].states).all()
    assert (restored.frames[2] == episodes[1].frames[2]).all()


def test_password_required(tmp_path):
    with EmbeddedValkey(tmp_path, password="s3cret") as server:
        assert EmbeddedValkey.running_in(tmp_path, password="s3cret") == server.url
        assert EmbeddedValkey.running_in(tmp_path) is None
        with ReplayClient(server.url, password="s3cret") as client:
            assert client.episode_ids("pretrain") == []
        with pytest.raises(ServerStartError, match="already running"):
            EmbeddedValkey(tmp_path).start()
