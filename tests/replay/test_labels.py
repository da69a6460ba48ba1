"""Labelled episodes (the expert's chunk per step) on a real Valkey: storage, windows, stats, schema."""

import numpy as np
import pytest
import redis

from fleetloop.replay import SCHEMA_VERSION, InvalidEpisodeError, ReplayClient, SchemaMismatchError, WindowSampler, keys
from fleetloop.replay.table import TableConfig

H = 4


def labelled(make_episode, length=3, label_horizon=6, steps_framed=None):
    frames = tuple(range(length)) if steps_framed is None else steps_framed
    ep = make_episode(length=length, frame_steps=frames)
    ep.labels = (np.arange(length * label_horizon * 2, dtype=np.float32).reshape(length, label_horizon, 2) + 1000)
    return ep


def test_labels_round_trip_and_are_counted_in_the_payload(client, make_episode):
    ep = labelled(make_episode)
    client.write_episode("corrections", ep)
    back = client.read_episode(ep.episode_id)
    np.testing.assert_array_equal(back.labels, ep.labels)
    assert back.label_horizon == 6 and back.labels.dtype == np.float32
    (info,) = client.episode_infos("corrections")
    assert info.label_horizon == 6
    assert info.nbytes > ep.labels.nbytes
    plain = make_episode()
    client.write_episode("corrections", plain)
    assert client.read_episode(plain.episode_id).labels is None
    assert client.episode_infos("corrections")[1].label_horizon == 0


@pytest.mark.parametrize(("change", "message"), [
    (lambda ep: setattr(ep, "labels", ep.labels[:2]), r"labels: has shape \(2, 6, 2\), expected \(3, L, 2\)"),
    (lambda ep: setattr(ep, "labels", ep.labels[..., :1].copy()), r"expected \(3, L, 2\)"),
    (lambda ep: setattr(ep, "labels", ep.labels.astype(np.float64)), "labels: dtype is float64"),
    (lambda ep: ep.labels.__setitem__((1, 2, 0), np.nan), r"labels: has a non-finite value .* \(1, 2, 0\)"),
    (lambda ep: ep.frames.pop(2), r"steps \[2\] have a label but no frame"),
])
def test_invalid_labels_store_nothing(client, make_episode, change, message):
    ep = labelled(make_episode)
    change(ep)
    before = client.redis.dbsize()
    with pytest.raises(InvalidEpisodeError, match=message):
        client.write_episode("corrections", ep)
    assert client.redis.dbsize() == before


def test_a_window_of_a_labelled_step_trains_on_its_label(client, make_episode):
    ep = labelled(make_episode, length=3, label_horizon=6)
    client.write_episode("corrections", ep)
    sampler = WindowSampler(client, {"corrections": 1.0}, horizon=H, seed=0)
    windows = sampler.sample(24)
    assert {w["step"] for w in windows} == {0, 1, 2}, "every labelled step starts windows"
    for w in windows:
        np.testing.assert_array_equal(w["action"], ep.labels[w["step"], :H])
        assert not w["action_is_pad"].any(), "no labelled window loses its label to padding"
        assert w["source"] == ep.source
    short = labelled(make_episode, length=2, label_horizon=2)
    client.write_episode("rollouts", short)
    batch = WindowSampler(client, {"rollouts": 1.0}, horizon=H, seed=1).sample_batch(4)
    assert batch["action_is_pad"][:, 2:].all() and not batch["action_is_pad"][:, :2].any(), \
        "a label shorter than H is padded like an episode's end"
    assert batch["source"] == [short.source] * 4


def test_eviction_removes_the_label(client, make_episode):
    client.configure_table("corrections", TableConfig(capacity=1))
    first = labelled(make_episode)
    client.write_episode("corrections", first)
    client.write_episode("corrections", labelled(make_episode))
    assert not client.redis.exists(keys.episode_key(first.episode_id, "label"))
    assert not client.redis.keys(f"fl:ep:{{{first.episode_id}}}:*")


def test_normalisation_bounds_cover_labels_and_tell_episodes_apart(client, make_episode):
    ep = labelled(make_episode)
    other = make_episode(states=np.full((6, 3), 5.0, np.float32))
    client.write_episode("corrections", ep)
    client.write_episode("corrections", other)
    stats = client.compute_stats("corrections", "so100")
    assert stats["action_max"].max() == ep.labels.max(), "label rows are actions the learner trains on"
    np.testing.assert_allclose(stats["state_mean_max"], 5.0)
    np.testing.assert_allclose(stats["state_mean_min"], np.minimum(ep.states.mean(0), 5.0), rtol=1e-6)
    np.testing.assert_allclose(stats["state_within_max"], ep.states.max(0) - ep.states.min(0), rtol=1e-6)


def test_a_version_3_replay_is_upgraded_in_place_and_others_are_refused(valkey, make_episode):
    raw = redis.Redis.from_url(valkey.url)
    raw.flushall()
    raw.set(keys.SCHEMA_VERSION_KEY, 3)
    old = make_episode()
    with ReplayClient(valkey.url) as client:
        assert int(raw.get(keys.SCHEMA_VERSION_KEY)) == SCHEMA_VERSION == 4
        client.write_episode("pretrain", old)
        raw.hdel(keys.episode_key(old.episode_id, "meta"), "label_horizon")  # as a version 3 writer stored it
        assert client.read_episode(old.episode_id).labels is None
        assert client.episode_infos("pretrain")[0].label_horizon == 0
    raw.set(keys.SCHEMA_VERSION_KEY, 2)
    with pytest.raises(SchemaMismatchError, match="schema version 2"):
        ReplayClient(valkey.url)
    raw.close()
