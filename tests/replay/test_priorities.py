"""Prioritised sampling: priorities stored in Redis, updatable, seen by every sampler."""

from collections import Counter

import pytest

from fleetloop.replay import ReplayClient, TableConfig, WindowSampler


def _episode_freqs(sampler, n=2000):
    counts = Counter(w["episode_id"] for w in sampler.sample(n))
    return {eid: c / n for eid, c in counts.items()}


@pytest.fixture
def prioritized(client, make_episode):
    client.configure_table("corrections", TableConfig(sampler="prioritized"))
    eps = [make_episode(frame_shape=(2, 2)) for _ in range(3)]
    for ep, priority in zip(eps, (1.0, 3.0, 0.0)):
        client.write_episode("corrections", ep, priority=priority)
    return [ep.episode_id for ep in eps]


def test_sampling_follows_insert_priorities(client, prioritized):
    a, b, c = prioritized
    assert client.priorities("corrections") == {a: 1.0, b: 3.0, c: 0.0}
    freqs = _episode_freqs(WindowSampler(client, {"corrections": 1.0}, horizon=1, seed=0))
    assert c not in freqs and abs(freqs[b] - 0.75) < 0.04


def test_updates_reach_every_sampler_at_refresh(valkey, client, prioritized):
    a, b, c = prioritized
    with ReplayClient(valkey.url) as other:
        sampler = WindowSampler(other, {"corrections": 1.0}, horizon=1, seed=1, refresh_s=3600)
        sampler.sample(1)
        assert client.update_priorities("corrections", {a: 0.0, c: 1.0, "gone": 5.0}) == 2
        assert c not in _episode_freqs(sampler, 200)  # cached until the next refresh
        sampler.refresh()
        freqs = _episode_freqs(sampler)
    assert a not in freqs and abs(freqs[c] - 0.25) < 0.04
    assert other.priorities("corrections", [a, "gone"]) == {a: 0.0}


def test_switching_a_table_to_prioritized_reloads_priorities(client, make_episode):
    eps = [make_episode() for _ in range(2)]
    for ep, priority in zip(eps, (0.0, 1.0)):
        client.write_episode("pretrain", ep, priority=priority)
    sampler = WindowSampler(client, {"pretrain": 1.0}, horizon=1, seed=2)
    assert len(_episode_freqs(sampler, 400)) == 2  # uniform ignores priorities
    client.configure_table("pretrain", {"sampler": "prioritized"})
    sampler.refresh()
    assert set(_episode_freqs(sampler, 400)) == {eps[1].episode_id}


@pytest.mark.parametrize("priority", [-1.0, float("nan"), float("inf")], ids=["negative", "nan", "inf"])
def test_invalid_priorities_are_refused(client, make_episode, prioritized, priority):
    with pytest.raises(ValueError, match="priority of 'x' must be finite and >= 0"):
        client.update_priorities("corrections", {"x": priority})
    ep = make_episode()
    with pytest.raises(ValueError, match=f"priority of '{ep.episode_id}'"):
        client.write_episode("corrections", ep, priority=priority)
