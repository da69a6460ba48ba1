"""TableConfig: validation, plain-dict round trip, storage in Redis, capacity eviction and the
record of evicted ids, the atomic index read."""

import dataclasses
import threading
import time
import uuid

import pytest
from prometheus_client import REGISTRY

from fleetloop.replay import (
    EmbeddedValkey,
    MinSize,
    ReplayClient,
    SampleToInsertRatio,
    TableConfig,
    WindowSampler,
)
from fleetloop.replay import keys


def test_from_dict_round_trip_and_presets():
    values = {"capacity": 100, "sampler": "prioritized", "samples_per_insert": 4.0,
              "min_size_to_sample": 10, "error_buffer": 8.0}
    config = TableConfig.from_dict(values)
    assert TableConfig.from_dict(config.to_dict()) == config
    assert config.rate_limiter() == SampleToInsertRatio(4.0, 10, 8.0)
    assert TableConfig(min_size_to_sample=5).rate_limiter() == MinSize(5)
    assert TableConfig().rate_limiter() is None


INVALID = [
    ("unknown_key", {"capacity": 1, "size": 2}, r"unknown table config keys \['size'\]"),
    ("zero_capacity", {"capacity": 0}, "capacity must be None or an int >= 1, got 0"),
    ("float_capacity", {"capacity": 2.5}, "capacity must be None or an int >= 1, got 2.5"),
    ("unknown_sampler", {"sampler": "lifo"}, "sampler must be one of .*got 'lifo'"),
    ("unknown_remover", {"remover": "lifo"}, r"remover must be one of \('fifo',\), got 'lifo'"),
    ("negative_exponent", {"priority_exponent": -1.0}, "priority_exponent must be finite"),
    ("ratio_without_buffer", {"samples_per_insert": 2.0}, r"samples_per_insert \(2.0\) needs an error_buffer"),
    ("buffer_without_ratio", {"error_buffer": 2.0}, r"error_buffer \(2.0\) needs samples_per_insert"),
    ("buffer_too_small", {"samples_per_insert": 4.0, "error_buffer": 1.0}, "error_buffer must be >= max"),
    ("zero_min_size", {"min_size_to_sample": 0}, "min_size_to_sample must be an int >= 1, got 0"),
    ("negative_ttl", {"evicted_id_ttl_s": -1.0}, "evicted_id_ttl_s must be a finite number >= 0, got -1.0"),
    ("infinite_ttl", {"evicted_id_ttl_s": float("inf")}, "evicted_id_ttl_s must be a finite number >= 0"),
]


@pytest.mark.parametrize("values, match", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_table_config(values, match):
    with pytest.raises(ValueError, match=match):
        TableConfig.from_dict(values)


def test_config_is_stored_on_connect_and_read_back(valkey):
    config = TableConfig(capacity=5, sampler="fifo", samples_per_insert=2.0, error_buffer=3.0)
    with ReplayClient(valkey.url, tables={"corrections": config.to_dict()}) as first:
        assert first.table_config("corrections") == config
        assert first.table_config("pretrain") == TableConfig()
    with ReplayClient(valkey.url) as second:  # a writer that was told nothing
        assert second.table_config("corrections") == config
        assert "corrections" in second.tables()


def test_capacity_evicts_oldest_episode_entirely(client, make_episode):
    client.configure_table("rollouts", TableConfig(capacity=2))
    eps = [make_episode(length=3 + i, frame_steps=(0, 2), policy_version=i, source=f"s{i}")
           for i in range(4)]
    for ep in eps:
        client.write_episode("rollouts", ep)
    assert client.episode_ids("rollouts") == [eps[2].episode_id, eps[3].episode_id]
    for ep in eps[:2]:
        assert client.redis.keys(f"fl:ep:{{{ep.episode_id}}}:*") == []
        with pytest.raises(KeyError):
            client.read_episode(ep.episode_id)
    assert set(client.priorities("rollouts")) == {eps[2].episode_id, eps[3].episode_id}
    stats = client.table_stats(detailed=True)["rollouts"]
    kept_bytes = sum(i.nbytes for i in client.episode_infos("rollouts"))
    assert stats | {"bytes": 0} == {
        "episodes": 2, "steps": 5 + 6, "bytes": 0, "inserts": 4, "evicted": 2, "samples": 0,
        "sources": {"s2": 1, "s3": 1}, "embodiments": {"so100": 2},
        "policy_versions": {2: 1, 3: 1}, "policy_version_min": 2, "policy_version_max": 3,
    }
    assert stats["bytes"] == kept_bytes


def test_lowering_capacity_evicts_at_once(client, make_episode):
    eps = [make_episode() for _ in range(5)]
    for ep in eps:
        client.write_episode("pretrain", ep)
    assert client.configure_table("pretrain", {"capacity": 2}) == 3
    assert client.episode_ids("pretrain") == [ep.episode_id for ep in eps[3:]]
    assert client.table_stats()["pretrain"]["episodes"] == 2


def evicted_ids(client: ReplayClient, table: str) -> set[str]:
    return {m.decode() for m in client.redis.zrange(keys.table_key(table, "evicted"), 0, -1)}


def test_write_retried_after_eviction_stores_nothing(client, make_episode):
    client.configure_table("rollouts", TableConfig(capacity=2))
    eps = [make_episode() for _ in range(4)]
    for ep in eps:
        client.write_episode("rollouts", ep)
    before = (client.episode_ids("rollouts"), client.table_stats(detailed=True)["rollouts"])
    rejects = REGISTRY.get_sample_value("fleetloop_replay_insert_rejects_total", {"reason": "evicted"}) or 0
    # The retry of a write whose reply was lost after capacity more inserts evicted it.
    assert client.write_episode("rollouts", eps[0]) == eps[0].episode_id
    assert (client.episode_ids("rollouts"), client.table_stats(detailed=True)["rollouts"]) == before
    assert REGISTRY.get_sample_value("fleetloop_replay_insert_rejects_total", {"reason": "evicted"}) == rejects + 1
    assert evicted_ids(client, "rollouts") == {eps[0].episode_id, eps[1].episode_id}


def test_evicted_ids_are_forgotten_after_their_ttl(client, make_episode):
    client.configure_table("rollouts", TableConfig(capacity=1, evicted_id_ttl_s=0.5))
    eps = [make_episode() for _ in range(3)]
    for ep in eps[:2]:
        client.write_episode("rollouts", ep)
    assert evicted_ids(client, "rollouts") == {eps[0].episode_id}
    time.sleep(0.6)
    client.write_episode("rollouts", eps[2])  # evicts eps[1]; eps[0]'s record has expired
    assert evicted_ids(client, "rollouts") == {eps[1].episode_id}
    client.write_episode("rollouts", eps[0])  # remembered no longer: stored as new
    assert client.episode_ids("rollouts") == [eps[0].episode_id]


def test_zero_ttl_remembers_no_evicted_id(client, make_episode):
    eps = [make_episode() for _ in range(3)]
    for ep in eps:
        client.write_episode("rollouts", ep)
    assert client.configure_table("rollouts", TableConfig(capacity=1, evicted_id_ttl_s=0)) == 2
    assert evicted_ids(client, "rollouts") == set()
    client.write_episode("rollouts", eps[0])
    assert client.episode_ids("rollouts") == [eps[0].episode_id]


def test_lowering_capacity_remembers_the_evicted_ids(client, make_episode):
    eps = [make_episode() for _ in range(3)]
    for ep in eps:
        client.write_episode("pretrain", ep)
    client.configure_table("pretrain", TableConfig(capacity=1))
    assert evicted_ids(client, "pretrain") == {eps[0].episode_id, eps[1].episode_id}
    client.write_episode("pretrain", eps[1])
    assert client.episode_ids("pretrain") == [eps[2].episode_id]


def test_read_index_pages_through_the_table(client, make_episode):
    client.configure_table("rollouts", TableConfig(capacity=4, sampler="fifo"))
    eps = [make_episode() for _ in range(6)]
    for ep in eps:
        client.write_episode("rollouts", ep)
    first = client.read_index("rollouts", after_seq=0, limit=3)
    assert (first.config, first.oldest_seq, first.more) == (TableConfig(capacity=4, sampler="fifo"), 3, True)
    assert [i.episode_id for i in first.infos] == [ep.episode_id for ep in eps[2:5]]
    rest = client.read_index("rollouts", after_seq=first.infos[-1].seq, limit=3)
    assert ([i.episode_id for i in rest.infos], rest.more) == ([eps[5].episode_id], False)
    assert [i.episode_id for i in client.episode_infos("rollouts")] == [ep.episode_id for ep in eps[2:]]
    empty = client.read_index("corrections")
    assert (empty.config, empty.oldest_seq, empty.infos, empty.more) == (TableConfig(), None, [], False)


def test_sampler_index_is_never_empty_while_the_table_turns_over(valkey, client, make_episode):
    """With capacity 1 and a writer replacing the episode continuously, every refresh must still
    see one episode: the index is read in one atomic step, not ids first and metas after."""
    client.configure_table("rollouts", TableConfig(capacity=1))
    client.write_episode("rollouts", make_episode())
    stop = threading.Event()
    episodes = [make_episode() for _ in range(50)]

    def churn():
        with ReplayClient(valkey.url) as writer:
            while not stop.is_set():
                for ep in episodes:
                    writer.write_episode("rollouts", dataclasses.replace(ep, episode_id=uuid.uuid4().hex))

    sampler = WindowSampler(client, {"rollouts": 1.0}, horizon=1, seed=0, refresh_s=3600)
    thread = threading.Thread(target=churn)
    thread.start()
    try:
        sizes = []
        for _ in range(300):
            sampler.refresh()
            sizes.append(sampler.num_episodes()["rollouts"])
    finally:
        stop.set()
        thread.join()
    inserts = client.table_stats(detailed=True)["rollouts"]["inserts"]
    assert inserts > 100, "the writer did not churn the table during the refreshes"
    assert min(sizes) >= 1, sizes


def test_sampler_survives_eviction_between_refresh_and_read(client, make_episode):
    client.configure_table("rollouts", TableConfig(capacity=3))
    old = [make_episode() for _ in range(3)]
    for ep in old:
        client.write_episode("rollouts", ep)
    sampler = WindowSampler(client, {"rollouts": 1.0}, horizon=2, seed=0, refresh_s=3600)
    sampler.sample(1)
    new = [make_episode() for _ in range(2)]  # evicts old[0] and old[1] behind its back
    for ep in new:
        client.write_episode("rollouts", ep)
    windows = sampler.sample(200)
    assert {w["episode_id"] for w in windows} == {old[2].episode_id}
    assert sampler.num_episodes() == {"rollouts": 1}
    sampler.refresh()
    assert sampler.num_episodes() == {"rollouts": 3}
    assert {w["episode_id"] for w in sampler.sample(200)} == {old[2].episode_id} | {
        ep.episode_id for ep in new}


def test_eviction_priorities_and_config_survive_restart(tmp_path, make_episode):
    data_dir = tmp_path / "replay"
    eps = [make_episode(frame_steps=(0, 2)) for _ in range(4)]
    with EmbeddedValkey(data_dir) as server, ReplayClient(
        server.url, tables={"rollouts": {"capacity": 3, "sampler": "prioritized"}}
    ) as client:
        for ep in eps:
            client.write_episode("rollouts", ep)
        client.update_priorities("rollouts", {eps[3].episode_id: 7.5})
        before = (client.table_stats(detailed=True), client.priorities("rollouts"),
                  client.episode_ids("rollouts"), client.redis.dbsize())
    with EmbeddedValkey(data_dir) as server, ReplayClient(server.url) as client:
        after = (client.table_stats(detailed=True), client.priorities("rollouts"),
                 client.episode_ids("rollouts"), client.redis.dbsize())
        assert client.table_config("rollouts").capacity == 3
        assert after == before
        assert after[1][eps[3].episode_id] == 7.5
        assert client.redis.hget(keys.table_counters("rollouts"), "evicted") == b"1"
