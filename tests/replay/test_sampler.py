"""WindowSampler against a real Valkey: mixture proportions, windows, padding, refresh."""

from collections import Counter

import numpy as np
import pytest
from prometheus_client import REGISTRY

from fleetloop.limits import InputError
from fleetloop.replay import EmptyReplayError, TableConfig, WindowSampler, keys
from fleetloop.replay.episode import encode_png


def _fill(client, make_episode, table, n, **kwargs):
    eps = [make_episode(**kwargs) for _ in range(n)]
    for ep in eps:
        client.write_episode(table, ep)
    return {ep.episode_id: ep for ep in eps}


def _fractions(windows):
    counts = Counter(w["table"] for w in windows)
    return {t: c / len(windows) for t, c in counts.items()}


def test_mixture_proportions_match_weights(client, make_episode):
    for table in ("pretrain", "rollouts", "corrections"):
        _fill(client, make_episode, table, 3, frame_shape=(4, 4))
    sampler = WindowSampler(
        client, {"pretrain": 0.5, "rollouts": 0.3, "corrections": 0.2}, horizon=2, seed=1
    )
    windows = [w for _ in range(10) for w in sampler.sample(200)]
    got = _fractions(windows)
    for table, want in {"pretrain": 0.5, "rollouts": 0.3, "corrections": 0.2}.items():
        assert abs(got[table] - want) < 0.04, (table, got)


def test_empty_tables_are_renormalised(client, make_episode):
    _fill(client, make_episode, "pretrain", 2, frame_shape=(4, 4))
    _fill(client, make_episode, "rollouts", 2, frame_shape=(4, 4))
    sampler = WindowSampler(
        client, {"pretrain": 0.5, "rollouts": 0.25, "corrections": 0.25}, horizon=1, seed=2
    )
    assert sampler.probabilities() == {}
    windows = sampler.sample(2000)
    assert sampler.probabilities() == pytest.approx({"pretrain": 2 / 3, "rollouts": 1 / 3})
    got = _fractions(windows)
    assert set(got) == {"pretrain", "rollouts"}
    assert abs(got["pretrain"] - 2 / 3) < 0.04


def test_window_contents_and_padding_at_episode_end(client, make_episode):
    ep = make_episode(length=5, frame_steps=(0, 3, 4), instruction="stack", policy_version=9)
    client.write_episode("rollouts", ep)
    sampler = WindowSampler(client, {"rollouts": 1.0}, horizon=4, seed=3)
    by_step = {w["step"]: w for w in sampler.sample(60)}
    assert set(by_step) == {0, 3, 4}
    np.testing.assert_array_equal(by_step[0]["action"], ep.actions[0:4])
    np.testing.assert_array_equal(by_step[3]["action"], ep.actions[[3, 4, 4, 4]])
    np.testing.assert_array_equal(by_step[4]["action"], ep.actions[[4, 4, 4, 4]])
    assert [by_step[t]["action_is_pad"].tolist() for t in (0, 3, 4)] == [
        [False] * 4, [False, False, True, True], [False, True, True, True]]
    w = by_step[3]
    assert w["action"].dtype == np.float32 and w["action"].shape == (4, 2)
    assert w["state"].dtype == np.float32
    np.testing.assert_array_equal(w["state"], ep.states[3])
    np.testing.assert_array_equal(w["image"], ep.frames[3])
    meta = ("instruction", "embodiment", "table", "episode_id", "policy_version")
    assert [w[k] for k in meta] == ["stack", "so100", "rollouts", ep.episode_id, 9]


def test_sampled_steps_always_have_frames(client, make_episode):
    eps = _fill(client, make_episode, "pretrain", 4, length=20, frame_steps=(0, 4, 8, 12, 16))
    sampler = WindowSampler(client, {"pretrain": 1.0}, horizon=4, seed=4)
    windows = sampler.sample(300)
    assert {w["step"] for w in windows} == {0, 4, 8, 12, 16}
    for w in windows[:50]:
        np.testing.assert_array_equal(w["image"], eps[w["episode_id"]].frames[w["step"]])


def test_seeded_samplers_agree(client, make_episode):
    _fill(client, make_episode, "pretrain", 5, frame_steps=(0, 1, 2))
    first, second = (
        WindowSampler(client, {"pretrain": 1.0}, horizon=2, seed=7).sample(20) for _ in range(2)
    )
    assert [(w["episode_id"], w["step"]) for w in first] == [
        (w["episode_id"], w["step"]) for w in second
    ]


def test_refresh_fetches_new_episodes(client, make_episode):
    _fill(client, make_episode, "rollouts", 1)
    sampler = WindowSampler(client, {"rollouts": 1.0}, horizon=1, seed=5, refresh_s=3600)
    sampler.sample(1)
    assert sampler.num_episodes() == {"rollouts": 1}
    new = _fill(client, make_episode, "rollouts", 2)
    sampler.sample(1)
    assert sampler.num_episodes() == {"rollouts": 1}
    sampler.refresh()
    assert sampler.num_episodes() == {"rollouts": 3}
    assert {w["episode_id"] for w in sampler.sample(100)} > set(new)


def test_samples_counted_per_table(client, make_episode):
    _fill(client, make_episode, "corrections", 1)
    labels = {"table": "corrections"}
    before = REGISTRY.get_sample_value("fleetloop_replay_samples_total", labels) or 0
    WindowSampler(client, {"corrections": 1.0}, horizon=1).sample(7)
    assert REGISTRY.get_sample_value("fleetloop_replay_samples_total", labels) == before + 7


def test_all_tables_empty_raises(client):
    sampler = WindowSampler(client, {"pretrain": 1.0, "rollouts": 1.0}, horizon=2)
    with pytest.raises(EmptyReplayError, match="empty"):
        sampler.sample(4)


def test_zero_weight_table_is_never_sampled(client, make_episode):
    _fill(client, make_episode, "pretrain", 1)
    _fill(client, make_episode, "rollouts", 1)
    sampler = WindowSampler(client, {"pretrain": 0.0, "rollouts": 1.0}, horizon=1, seed=6)
    assert {w["table"] for w in sampler.sample(100)} == {"rollouts"}


def test_set_mixture_reweights_from_the_next_sample(client, make_episode):
    _fill(client, make_episode, "pretrain", 2, frame_shape=(4, 4))
    _fill(client, make_episode, "corrections", 2, frame_shape=(4, 4))
    sampler = WindowSampler(client, {"pretrain": 0.5, "corrections": 0.5}, horizon=1, seed=7)
    assert abs(_fractions(sampler.sample(2000))["corrections"] - 0.5) < 0.04
    sampler.set_mixture({"pretrain": 0.25, "corrections": 0.75})
    assert abs(_fractions(sampler.sample(2000))["corrections"] - 0.75) < 0.04
    assert sampler.probabilities() == pytest.approx({"pretrain": 0.25, "corrections": 0.75})


@pytest.mark.parametrize("mixture, match", [
    ({"pretrain": 0.5, "rollouts": 0.5}, r"unknown tables \['rollouts'\]; this sampler weighs only its tables: \['corrections', 'pretrain'\]"),
    ({"pretrain": -1.0, "corrections": 1.0}, "'pretrain': -1.0"),
    ({"pretrain": 0.0, "corrections": 0.0}, "at least one weight > 0"),
], ids=["table_not_built_with", "negative_weight", "all_zero"])
def test_set_mixture_refuses_what_the_constructor_refuses_and_keeps_the_old_weights(client, make_episode, mixture,
                                                                                     match):
    _fill(client, make_episode, "rollouts", 1, frame_shape=(4, 4))
    sampler = WindowSampler(client, {"pretrain": 0.5, "corrections": 0.5}, horizon=1, seed=8)
    with pytest.raises(ValueError, match=match):
        sampler.set_mixture(mixture)
    assert sampler.mixture == {"pretrain": 0.5, "corrections": 0.5}


INVALID_ARGUMENTS = [
    ("unknown_tables", {"pretrain": 1, "sim": 1, "zzz": 0.5}, 2, r"unknown tables \['sim', 'zzz'\]"),
    ("invalid_name", {"Bad-Name": 1.0}, 2, "invalid table name 'Bad-Name'"),
    ("negative_weight", {"pretrain": -0.1, "rollouts": 1.0}, 2, "'pretrain': -0.1"),
    ("nan_weight", {"pretrain": float("nan")}, 2, "finite"),
    ("all_zero", {"pretrain": 0.0, "rollouts": 0.0}, 2, "at least one weight > 0"),
    ("empty_mixture", {}, 2, "mixture is empty"),
    ("zero_horizon", {"pretrain": 1.0}, 0, "horizon must be >= 1, got 0"),
]


@pytest.mark.parametrize(
    "mixture, horizon, match",
    [c[1:] for c in INVALID_ARGUMENTS],
    ids=[c[0] for c in INVALID_ARGUMENTS],
)
def test_invalid_sampler_arguments(client, mixture, horizon, match):
    with pytest.raises(ValueError, match=match):
        WindowSampler(client, mixture, horizon=horizon)


def test_custom_table_is_known_once_written(client, make_episode):
    _fill(client, make_episode, "sim_ablation", 1)
    windows = WindowSampler(client, {"sim_ablation": 1.0}, horizon=1).sample(3)
    assert {w["table"] for w in windows} == {"sim_ablation"}


def test_windows_carry_the_version_that_acted_at_their_step(client, make_episode):
    """Weights refreshed between chunks: each window reports the version that acted at its step."""
    ep = make_episode(length=8, frame_steps=(0, 3, 6), policy_version=4, version_changes=((3, 5), (6, 7)))
    client.write_episode("rollouts", ep)
    assert client.read_episode(ep.episode_id).version_changes == ((3, 5), (6, 7))
    batch = WindowSampler(client, {"rollouts": 1.0}, horizon=2, seed=3).sample_batch(40)
    assert {int(s): int(v) for s, v in zip(batch["step"], batch["policy_version"])} == {0: 4, 3: 5, 6: 7}


def test_batch_size_must_be_positive(client, make_episode):
    _fill(client, make_episode, "pretrain", 1)
    with pytest.raises(ValueError, match="batch_size"):
        WindowSampler(client, {"pretrain": 1.0}, horizon=1).sample(0)


def test_sample_batch_stacks_windows(client, make_episode):
    ep = make_episode(length=5, frame_steps=(0, 3, 4), policy_version=4)
    client.write_episode("rollouts", ep)
    sampler = WindowSampler(client, {"rollouts": 1.0}, horizon=4, seed=3)
    batch = sampler.sample_batch(40)
    assert batch["image"].shape == (40, 8, 10, 3) and batch["image"].dtype == np.uint8
    assert batch["state"].shape == (40, 3) and batch["state"].dtype == np.float32
    assert batch["action"].shape == (40, 4, 2) and batch["action"].dtype == np.float32
    assert batch["step"].dtype == np.int64 and set(batch["step"]) == {0, 3, 4}
    assert batch["policy_version"].tolist() == [4] * 40
    assert batch["table"] == ["rollouts"] * 40 and batch["episode_id"] == [ep.episode_id] * 40
    for i, step in enumerate(batch["step"][:10]):
        np.testing.assert_array_equal(batch["image"][i], ep.frames[int(step)])
        np.testing.assert_array_equal(batch["state"][i], ep.states[step])
        np.testing.assert_array_equal(batch["action"][i], ep.actions[np.minimum(np.arange(step, step + 4), 4)])
        assert batch["action_is_pad"][i].tolist() == (np.arange(step, step + 4) > 4).tolist()


def test_sample_batch_can_leave_frames_encoded(client, make_episode):
    ep = make_episode()
    client.write_episode("pretrain", ep)
    batch = WindowSampler(client, {"pretrain": 1.0}, horizon=2).sample_batch(3, decode_images=False)
    assert "image" not in batch and len(batch["image_png"]) == 3
    assert batch["image_png"][0].startswith(b"\x89PNG")


def test_sample_batch_refuses_mixed_dims(client, make_episode):
    client.write_episode("pretrain", make_episode(state_dim=3))
    client.write_episode("rollouts", make_episode(state_dim=5, embodiment="gr1"))
    sampler = WindowSampler(client, {"pretrain": 1.0, "rollouts": 1.0}, horizon=1, seed=0)
    with pytest.raises(ValueError, match=r"differ in \(state_dim, action_dim, frame_shape\)"):
        sampler.sample_batch(50)
    assert {w["state"].shape for w in sampler.sample(50)} == {(3,), (5,)}


def test_fifo_sampler_reads_the_oldest_episode(client, make_episode):
    client.configure_table("rollouts", {"sampler": "fifo", "capacity": 2})
    eps = [make_episode() for _ in range(3)]
    for ep in eps:
        client.write_episode("rollouts", ep)
    windows = WindowSampler(client, {"rollouts": 1.0}, horizon=1).sample(10)
    assert {w["episode_id"] for w in windows} == {eps[1].episode_id}


def test_a_stored_frame_of_another_size_is_refused_before_decoding(client, make_episode):
    """A frame key overwritten behind the replay's back (e.g. a PNG bomb) is refused by its header."""
    episode = make_episode(length=3, frame_steps=(0,))
    client.write_episode("rollouts", episode)
    client.redis.set(keys.frame_key(episode.episode_id, 0), encode_png(np.zeros((512, 512, 3), np.uint8)))
    sampler = WindowSampler(client, {"rollouts": 1.0}, horizon=1, seed=0)
    expected = rf"frame 0 of episode {episode.episode_id}: PNG header says 512x512, expected 8x10"
    with pytest.raises(InputError, match=expected):
        sampler.sample(1)
    with pytest.raises(InputError, match=expected):
        client.read_episode(episode.episode_id)


@pytest.mark.parametrize("sampler", ["uniform", "prioritized"])
def test_every_window_is_equally_likely_whatever_its_episode_length(client, make_episode, sampler):
    client.configure_table("corrections", TableConfig(sampler=sampler))
    short = make_episode(length=1, frame_steps=(0,), frame_shape=(4, 4))  # a relabelled planning state
    long = make_episode(length=9, frame_steps=tuple(range(9)), frame_shape=(4, 4))  # a takeover
    for ep in (short, long):
        client.write_episode("corrections", ep)
    windows = [w for _ in range(10) for w in WindowSampler(client, {"corrections": 1.0}, horizon=2, seed=3).sample(300)]
    share = sum(w["episode_id"] == long.episode_id for w in windows) / len(windows)
    assert abs(share - 0.9) < 0.03, f"the 9-window episode should hold 9 of every 10 windows, got {share:.3f}"


def test_sample_by_episode_draws_episodes_whatever_their_length(client, make_episode):
    client.configure_table("corrections", TableConfig(sample_by="episode"))
    short = make_episode(length=1, frame_steps=(0,), frame_shape=(4, 4))
    long = make_episode(length=9, frame_steps=tuple(range(9)), frame_shape=(4, 4))
    for ep in (short, long):
        client.write_episode("corrections", ep)
    windows = [w for _ in range(10) for w in WindowSampler(client, {"corrections": 1.0}, horizon=2, seed=3).sample(300)]
    share = sum(w["episode_id"] == long.episode_id for w in windows) / len(windows)
    assert abs(share - 0.5) < 0.04, f"each episode should be drawn half the time, got {share:.3f}"


def test_an_unknown_sample_by_names_the_field():
    with pytest.raises(ValueError, match=r"sample_by must be one of \('window', 'episode'\), got 'frame'"):
        TableConfig(sample_by="frame")
