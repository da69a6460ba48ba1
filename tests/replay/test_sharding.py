"""ShardedReplayClient over two real Valkey servers: placement, reads, samples, stats."""

from collections import Counter

import numpy as np
import pytest

from fleetloop.replay import (
    EmbeddedValkey,
    ReplayClient,
    ReplayCollector,
    ReplayUnavailableError,
    ShardedReplayClient,
    WindowSampler,
    shard_index,
)


@pytest.fixture
def second(tmp_path):
    with EmbeddedValkey(tmp_path / "second") as server:
        yield server


@pytest.fixture
def sharded(valkey, second):
    with ShardedReplayClient([valkey.url, second.url], socket_timeout=5.0) as client:
        yield client


def _write(client, make_episode, table, n, **kwargs):
    eps = [make_episode(**kwargs) for _ in range(n)]
    for ep in eps:
        client.write_episode(table, ep)
    return eps


def test_shard_index_is_stable_and_balanced():
    ids = [f"ep-{i}" for i in range(4000)]
    placement = [shard_index(eid, 2) for eid in ids]
    assert placement == [shard_index(eid, 2) for eid in ids]
    assert abs(Counter(placement)[0] / len(ids) - 0.5) < 0.03
    moved = sum(shard_index(eid, 3) != p for eid, p in zip(ids, placement))
    assert abs(moved / len(ids) - 1 / 3) < 0.03  # appending a shard moves ~1/(n+1)
    assert shard_index("x", 1) == 0
    with pytest.raises(ValueError, match="num_shards must be >= 1, got 0"):
        shard_index("x", 0)


def test_episodes_land_on_both_shards_and_read_back(sharded, make_episode):
    eps = _write(sharded, make_episode, "pretrain", 16, frame_steps=(0, 3))
    per_shard = [set(shard.episode_ids("pretrain")) for shard in sharded.shards]
    assert all(per_shard) and per_shard[0].isdisjoint(per_shard[1])
    assert set(sharded.episode_ids("pretrain")) == {ep.episode_id for ep in eps}
    for ep in eps[:4]:
        assert ep.episode_id in sharded.shard_for(ep.episode_id).episode_ids("pretrain")
        back = sharded.read_episode(ep.episode_id)
        np.testing.assert_array_equal(back.frames[3], ep.frames[3])


def test_stats_aggregate_over_shards(sharded, make_episode):
    eps = _write(sharded, make_episode, "rollouts", 10, length=4, policy_version=2)
    eps += _write(sharded, make_episode, "rollouts", 2, length=5, source="policy", policy_version=9)
    stats = sharded.table_stats(detailed=True)["rollouts"]
    per_shard = [shard.table_stats(detailed=True)["rollouts"] for shard in sharded.shards]
    assert stats["episodes"] == 12 and stats["steps"] == 10 * 4 + 2 * 5
    assert stats["bytes"] == sum(s["bytes"] for s in per_shard)
    assert stats["sources"] == {"expert_demo": 10, "policy": 2}
    assert stats["policy_versions"] == {2: 10, 9: 2}
    assert (stats["policy_version_min"], stats["policy_version_max"]) == (2, 9)
    assert sharded.table_stats()["pretrain"] == {"episodes": 0, "steps": 0, "bytes": 0}
    assert sharded.count_by("rollouts", "source") == {"expert_demo": 10, "policy": 2}
    states = np.concatenate([ep.states for ep in eps])
    bounds = sharded.compute_stats("rollouts", "so100")
    np.testing.assert_array_equal(bounds["state_min"], states.min(axis=0))
    np.testing.assert_array_equal(bounds["state_max"], states.max(axis=0))
    sharded.configure_table("rollouts", {"capacity": 100})
    families = {m.name: m for m in ReplayCollector(sharded).collect()}
    assert {s.labels["table"]: s.value for s in families["fleetloop_replay_episodes"].samples}["rollouts"] == 12
    capacity = {s.labels["table"]: s.value for s in families["fleetloop_replay_capacity"].samples}
    assert capacity == {"rollouts": 100 * len(sharded.shards)}  # capacity applies per shard
    used = [shard.redis.info("memory")["used_memory"] for shard in sharded.shards]
    assert families["fleetloop_replay_memory_used_bytes"].samples[0].value == pytest.approx(sum(used), rel=0.2)


def test_sampling_spans_shards_proportionally(sharded, make_episode):
    eps = _write(sharded, make_episode, "corrections", 12, frame_shape=(2, 2))
    sampler = WindowSampler(sharded, {"corrections": 1.0}, horizon=2, seed=0)
    windows = sampler.sample(3000)
    counts = Counter(w["episode_id"] for w in windows)
    assert set(counts) == {ep.episode_id for ep in eps}
    on_first = set(sharded.shards[0].episode_ids("corrections"))
    share = sum(c for eid, c in counts.items() if eid in on_first) / len(windows)
    assert abs(share - len(on_first) / 12) < 0.04
    batch = sampler.sample_batch(8)
    assert batch["state"].shape == (8, 3) and batch["image"].shape == (8, 2, 2, 3)


def test_capacity_applies_per_shard(sharded, make_episode):
    sharded.configure_table("rollouts", {"capacity": 2})
    per_shard = {shard.url: 0 for shard in sharded.shards}
    while min(per_shard.values()) < 5:  # ids are random: 5 on each shard, whatever the hash does
        episode = make_episode()
        url = sharded.shard_for(episode.episode_id).url
        if per_shard[url] < 5:
            sharded.write_episode("rollouts", episode)
            per_shard[url] += 1
    assert [len(s.episode_ids("rollouts")) for s in sharded.shards] == [2, 2]
    assert sharded.table_config("rollouts").capacity == 2
    assert sharded.table_stats(detailed=True)["rollouts"]["evicted"] == 6


def test_priorities_route_to_their_shard(sharded, make_episode):
    sharded.configure_table("pretrain", {"sampler": "prioritized"})
    eps = _write(sharded, make_episode, "pretrain", 6)
    chosen = eps[0].episode_id
    assert sharded.update_priorities("pretrain", {ep.episode_id: 0.0 for ep in eps}) == 6
    sharded.update_priorities("pretrain", {chosen: 2.0})
    assert sharded.priorities("pretrain", [chosen, eps[1].episode_id]) == {
        chosen: 2.0, eps[1].episode_id: 0.0}
    sampler = WindowSampler(sharded, {"pretrain": 1.0}, horizon=1, seed=0)
    assert {w["episode_id"] for w in sampler.sample(50)} == {chosen}


def test_a_down_shard_is_named(valkey, second, sharded, make_episode):
    down_url = second.url
    on_second = next(ep for ep in (make_episode() for _ in range(64))
                     if sharded.shard_for(ep.episode_id).url == down_url)
    second.stop()
    with pytest.raises(ReplayUnavailableError, match=down_url):
        sharded.write_episode("pretrain", on_second)
    with pytest.raises(ReplayUnavailableError, match=down_url):
        sharded.table_stats()
    with pytest.raises(ReplayUnavailableError, match=rf"shard 2 of 2 is down.*{down_url}"):
        ShardedReplayClient([valkey.url, down_url])


def test_invalid_shard_lists():
    with pytest.raises(ValueError, match="at least one URL"):
        ShardedReplayClient([])
    with pytest.raises(ValueError, match="distinct"):
        ShardedReplayClient(["redis://127.0.0.1:1/0", "redis://127.0.0.1:1/0"])


def test_single_client_is_its_own_shard(client):
    assert client.shards == [client] and client.shard_for("any") is client
    assert isinstance(client, ReplayClient)
