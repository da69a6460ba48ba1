"""ReplayClient against a real Valkey: round trips, atomicity, idempotence, errors, stats."""

import socket
import time

import numpy as np
import pytest
import redis
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from fleetloop.replay import (
    SCHEMA_VERSION,
    EmbeddedValkey,
    EmptyReplayError,
    InvalidEpisodeError,
    ReplayClient,
    ReplayCollector,
    ReplayTimeoutError,
    ReplayUnavailableError,
    SchemaMismatchError,
)
from fleetloop.replay import keys


def _metric(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_round_trip_is_exact(client, make_episode):
    ep = make_episode(length=9, frame_steps=(0, 4, 8), policy_version=7, success=False)
    assert client.write_episode("rollouts", ep) == ep.episode_id
    back = client.read_episode(ep.episode_id)
    for name in ("states", "actions", "intervened", "rewards"):
        got, want = getattr(back, name), getattr(ep, name)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    assert back.frames.keys() == ep.frames.keys()
    for step, frame in ep.frames.items():
        assert back.frames[step].dtype == np.uint8
        np.testing.assert_array_equal(back.frames[step], frame)
    for name in ("instruction", "embodiment", "source", "policy_version", "actor_id",
                 "success", "episode_id"):
        assert getattr(back, name) == getattr(ep, name)
    back.validate()


def test_layout_uses_hash_tagged_keys(client, make_episode):
    ep = make_episode(frame_steps=(0, 3))
    client.write_episode("pretrain", ep)
    stored = {k.decode() for k in client.redis.keys(f"fl:ep:{{{ep.episode_id}}}:*")}
    assert stored == {
        keys.episode_key(ep.episode_id, f) for f in ("meta", *keys.EPISODE_ARRAYS) if f != "label"
    } | {keys.frame_key(ep.episode_id, 0), keys.frame_key(ep.episode_id, 3)}, "no label key without labels"
    assert int(client.redis.get(keys.SCHEMA_VERSION_KEY)) == SCHEMA_VERSION
    assert len(client.redis.getrange(keys.episode_key(ep.episode_id, "state"), 0, -1)) == 6 * 3 * 4


def test_invalid_episode_stores_nothing(client, make_episode):
    client.write_episode("rollouts", make_episode())
    before_keys, before_stats = client.redis.dbsize(), client.table_stats()
    rejects = _metric("fleetloop_replay_insert_rejects_total", reason="invalid")
    bad = make_episode(frame_steps=(0, 2))
    bad.actions[3, 1] = np.nan
    with pytest.raises(InvalidEpisodeError, match="actions"):
        client.write_episode("rollouts", bad)
    assert client.redis.dbsize() == before_keys
    assert client.table_stats() == before_stats
    assert _metric("fleetloop_replay_insert_rejects_total", reason="invalid") == rejects + 1


def test_retried_write_stores_once(client, make_episode):
    ep = make_episode(length=5)
    inserts = _metric("fleetloop_replay_inserts_total", table="corrections")
    client.write_episode("corrections", ep)
    keys_after_first = client.redis.dbsize()
    assert client.write_episode("corrections", ep) == ep.episode_id
    assert client.redis.dbsize() == keys_after_first
    assert client.episode_ids("corrections") == [ep.episode_id]
    stats = client.table_stats()["corrections"]
    assert (stats["episodes"], stats["steps"]) == (1, 5)
    assert _metric("fleetloop_replay_inserts_total", table="corrections") == inserts + 1


def test_write_survives_script_cache_flush(client, make_episode):
    client.write_episode("pretrain", make_episode())
    client.redis.script_flush()
    client.write_episode("pretrain", make_episode())
    assert len(client.episode_ids("pretrain")) == 2


def test_episode_ids_in_insertion_order_and_stats(client, make_episode):
    eps = [make_episode(length=3 + i) for i in range(5)]
    for ep in eps:
        client.write_episode("pretrain", ep)
    client.write_episode("my_sim_2", make_episode(length=2))
    assert client.episode_ids("pretrain") == [ep.episode_id for ep in eps]
    stats = client.table_stats()
    assert list(stats) == ["pretrain", "rollouts", "corrections", "evaluations", "my_sim_2"]
    assert stats["pretrain"]["episodes"] == 5 and stats["pretrain"]["steps"] == 3 + 4 + 5 + 6 + 7
    assert stats["pretrain"]["bytes"] > 0
    assert stats["rollouts"] == {"episodes": 0, "steps": 0, "bytes": 0}
    assert stats["my_sim_2"]["steps"] == 2
    infos = client.episode_infos("pretrain", after_seq=3)
    assert [i.episode_id for i in infos] == [eps[3].episode_id, eps[4].episode_id]


def test_count_by(client, make_episode):
    for source, version in [("expert_demo", 0), ("policy", 3), ("policy", 4), ("policy", 4)]:
        client.write_episode("rollouts", make_episode(source=source, policy_version=version))
    assert client.count_by("rollouts", "source") == {"expert_demo": 1, "policy": 3}
    assert client.count_by("rollouts", "policy_version") == {0: 1, 3: 1, 4: 2}
    with pytest.raises(ValueError, match="nope"):
        client.count_by("rollouts", "nope")


@pytest.mark.parametrize("table", ["", "Rollouts", "1st", "a-b", "x" * 33])
def test_invalid_table_name_rejected(client, make_episode, table):
    with pytest.raises(ValueError, match="invalid table name"):
        client.write_episode(table, make_episode())


def test_read_unknown_episode(client):
    with pytest.raises(KeyError, match="nope"):
        client.read_episode("nope")


def test_compute_stats(client, make_episode):
    a = [make_episode(length=4 + i, embodiment="so100") for i in range(3)]
    b = make_episode(embodiment="gr1", state_dim=5, action_dim=4)
    b.states += 100.0
    for ep in (*a, b):
        client.write_episode("pretrain", ep)
    other_table = make_episode(embodiment="so100", states=np.full((6, 3), -50, np.float32))
    client.write_episode("rollouts", other_table)
    stats = client.compute_stats("pretrain", "so100")
    states = np.concatenate([ep.states for ep in a])
    actions = np.concatenate([ep.actions for ep in a])
    np.testing.assert_array_equal(stats["state_min"], states.min(axis=0))
    np.testing.assert_array_equal(stats["state_max"], states.max(axis=0))
    np.testing.assert_array_equal(stats["action_min"], actions.min(axis=0))
    np.testing.assert_array_equal(stats["action_max"], actions.max(axis=0))
    assert client.compute_stats("pretrain", "gr1")["state_min"].shape == (5,)
    with pytest.raises(EmptyReplayError, match="unitree"):
        client.compute_stats("pretrain", "unitree")


def test_schema_mismatch(valkey):
    raw = redis.Redis.from_url(valkey.url)
    raw.set(keys.SCHEMA_VERSION_KEY, 999)
    with pytest.raises(SchemaMismatchError, match=rf"999.*{SCHEMA_VERSION}"):
        ReplayClient(valkey.url)
    raw.close()


def test_unreachable_url_fails_fast():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    start = time.monotonic()
    with pytest.raises(ReplayUnavailableError, match=rf"{url}.*running"):
        ReplayClient(url)
    assert time.monotonic() - start < 3.0


def test_wrong_password_is_unavailable(tmp_path):
    with EmbeddedValkey(tmp_path, password="right") as server:
        with pytest.raises(ReplayUnavailableError, match="password"):
            ReplayClient(server.url, password="wrong")


def test_timeout_is_translated(valkey, client):
    raw = redis.Redis.from_url(valkey.url)
    slow = ReplayClient(valkey.url, socket_timeout=0.2)
    raw.execute_command("CLIENT", "PAUSE", 1500, "ALL")
    try:
        with pytest.raises(ReplayTimeoutError, match=valkey.url):
            slow.episode_ids("pretrain")
    finally:
        raw.execute_command("CLIENT", "UNPAUSE")
        slow.close()
        raw.close()


def test_collector_reports_table_stats(client, make_episode):
    client.configure_table("rollouts", {"capacity": 50})
    client.write_episode("rollouts", make_episode(length=7))
    client.redis.config_set("maxmemory", 256 << 20)
    registry = CollectorRegistry()
    registry.register(ReplayCollector(client))
    assert registry.get_sample_value("fleetloop_replay_episodes", {"table": "rollouts"}) == 1
    assert registry.get_sample_value("fleetloop_replay_steps", {"table": "rollouts"}) == 7
    assert registry.get_sample_value("fleetloop_replay_bytes", {"table": "rollouts"}) == \
        client.table_stats()["rollouts"]["bytes"] > 0
    assert registry.get_sample_value("fleetloop_replay_capacity", {"table": "rollouts"}) == 50
    assert registry.get_sample_value("fleetloop_replay_capacity", {"table": "pretrain"}) is None  # unbounded
    assert registry.get_sample_value("fleetloop_replay_memory_used_bytes") == pytest.approx(
        client.redis.info("memory")["used_memory"], rel=0.2)
    assert registry.get_sample_value("fleetloop_replay_memory_max_bytes") == 256 << 20
    assert registry.get_sample_value("fleetloop_replay_up") == 1
    assert b'fleetloop_replay_episodes{table="pretrain"} 0.0' in generate_latest(registry)


def test_collector_reports_down_when_the_server_is_gone(valkey, client):
    registry = CollectorRegistry()
    registry.register(ReplayCollector(client))
    valkey.stop()
    assert registry.get_sample_value("fleetloop_replay_up") == 0
    assert registry.get_sample_value("fleetloop_replay_episodes", {"table": "pretrain"}) is None


def test_detailed_table_stats(client, make_episode):
    for source, embodiment, version in [("expert_demo", "so100", 0), ("policy", "so100", 3),
                                        ("policy", "gr1", 5)]:
        client.write_episode("rollouts", make_episode(
            length=4, source=source, embodiment=embodiment, policy_version=version))
    stats = client.table_stats(detailed=True)
    row = stats["rollouts"]
    assert row["episodes"] == 3 and row["steps"] == 12 and row["bytes"] > 0
    assert (row["inserts"], row["evicted"], row["samples"]) == (3, 0, 0)
    assert row["sources"] == {"expert_demo": 1, "policy": 2}
    assert row["embodiments"] == {"gr1": 1, "so100": 2}
    assert row["policy_versions"] == {0: 1, 3: 1, 5: 1}
    assert (row["policy_version_min"], row["policy_version_max"]) == (0, 5)
    assert stats["pretrain"]["policy_version_min"] is None
    assert stats["pretrain"]["sources"] == {}
    assert {k: row[k] for k in ("episodes", "steps", "bytes")} == client.table_stats()["rollouts"]
