"""Episode.validate: each invalid case names the field at fault; stored frames are checked before decoding."""

import io
import re

import numpy as np
import pytest
from PIL import Image, ImageFile

from fleetloop import limits
from fleetloop.limits import InputError
from fleetloop.replay import InvalidEpisodeError
from fleetloop.replay.episode import EpisodeInfo, decode_frame, encode_png


def test_valid_episode_passes(make_episode):
    make_episode(frame_steps=(0, 2, 5)).validate()


def test_default_episode_ids_are_unique(make_episode):
    assert make_episode().episode_id != make_episode().episode_id


def _nan_states(ep):
    ep.states[1, 0] = np.nan


def _inf_rewards(ep):
    ep.rewards[0] = np.inf


def _set(name, value_of):
    """Mutation setting field ``name`` to ``value_of(episode)``."""
    return lambda ep: setattr(ep, name, value_of(ep))


def _frame(step, value_of):
    """Mutation setting frame ``step`` to ``value_of(episode)``."""
    return lambda ep: ep.frames.update({step: value_of(ep)})


INVALID_CASES = [
    ("actions_short", "actions", _set("actions", lambda ep: ep.actions[:-1])),
    ("rewards_short", "rewards", _set("rewards", lambda ep: ep.rewards[:-1])),
    ("intervened_short", "intervened", _set("intervened", lambda ep: ep.intervened[:-1])),
    ("nan_state", "states", _nan_states),
    ("inf_reward", "rewards", _inf_rewards),
    ("empty_states", "states", _set("states", lambda ep: np.zeros((0, 3), np.float32))),
    ("states_float64", "states", _set("states", lambda ep: ep.states.astype(np.float64))),
    ("actions_1d", "actions", _set("actions", lambda ep: ep.actions[:, 0])),
    ("intervened_uint8", "intervened", _set("intervened", lambda ep: ep.intervened.astype(np.uint8))),
    ("no_frames", "frames", _set("frames", lambda ep: {})),
    ("frame_step_out_of_range", "frames", _frame(6, lambda ep: ep.frames[0])),
    ("frame_step_negative", "frames", _frame(-1, lambda ep: ep.frames[0])),
    ("frame_step_not_int", "frames", _frame("a", lambda ep: ep.frames[0])),
    ("no_frame_at_step_0", "frames", _set("frames", lambda ep: {1: ep.frames[0]})),
    ("frame_float", "frames[0]", _frame(0, lambda ep: ep.frames[0].astype(np.float32))),
    ("frame_one_channel", "frames[0]", _frame(0, lambda ep: ep.frames[0][..., :1])),
    ("frame_shape_differs", "frames[2]", _frame(2, lambda ep: ep.frames[0][:4])),
    ("empty_embodiment", "embodiment", _set("embodiment", lambda ep: "")),
    ("episode_id_hash_tag", "episode_id", _set("episode_id", lambda ep: "a{b}")),
    ("negative_policy_version", "policy_version", _set("policy_version", lambda ep: -1)),
    ("success_not_bool", "success", _set("success", lambda ep: 1)),
    ("version_change_at_step_0", "version_changes", _set("version_changes", lambda ep: ((0, 1),))),
    ("version_change_past_end", "version_changes", _set("version_changes", lambda ep: ((6, 1),))),
    ("version_changes_unordered", "version_changes", _set("version_changes", lambda ep: ((3, 1), (2, 2)))),
    ("version_change_backwards", "version_changes", _set("version_changes", lambda ep: ((2, 3), (4, 2)))),
    ("version_change_not_pair", "version_changes", _set("version_changes", lambda ep: ((2,),))),
]


@pytest.mark.parametrize(
    "field, mutate", [c[1:] for c in INVALID_CASES], ids=[c[0] for c in INVALID_CASES]
)
def test_invalid_episode_names_field(make_episode, mutate, field):
    ep = make_episode()
    mutate(ep)
    with pytest.raises(InvalidEpisodeError, match=f"field {re.escape(field)}:"):
        ep.validate()


def test_invalid_episode_error_is_value_error(make_episode):
    ep = make_episode(policy_version=-3)
    with pytest.raises(ValueError, match="-3"):
        ep.validate()


def _no_decoding(monkeypatch) -> None:
    """Fail the test if PIL decodes any pixel."""
    def load(self):
        raise AssertionError(f"PIL decoded a {self.size} image")
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def stored_as(shape: tuple[int, int, int]) -> EpisodeInfo:
    """The info of an episode "ep1" whose frames were stored with ``shape``."""
    return EpisodeInfo(episode_id="ep1", table="rollouts", seq=1, length=2, state_dim=1, action_dim=1,
                       frame_steps=(0,), frame_shape=shape, instruction="", embodiment="e", source="s",
                       policy_version=0, actor_id="a", success=False, nbytes=0)


def test_decode_frame_round_trips_a_frame_of_the_stored_shape():
    frame = np.random.default_rng(0).integers(0, 256, (6, 4, 3), dtype=np.uint8)
    assert np.array_equal(decode_frame(encode_png(frame), stored_as((6, 4, 3)), 0), frame)


def test_decode_frame_of_another_shape_is_refused_before_decoding(monkeypatch):
    blob = encode_png(np.zeros((6, 4, 3), np.uint8))
    _no_decoding(monkeypatch)
    with pytest.raises(InputError, match=re.escape("frame 3 of episode ep1: PNG header says 6x4, expected 4x6")):
        decode_frame(blob, stored_as((4, 6, 3)), 3)


def test_decode_frame_over_the_pixel_limit_is_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(limits, "MAX_IMAGE_PIXELS", 64 * 64)
    assert decode_frame(encode_png(np.zeros((64, 64, 3), np.uint8)), stored_as((64, 64, 3)), 0).shape == (64, 64, 3)
    blob = encode_png(np.zeros((64, 65, 3), np.uint8))
    _no_decoding(monkeypatch)
    with pytest.raises(InputError, match=re.escape("frame 0 of episode ep1: 64x65 exceeds the limit of 4096 pixels")):
        decode_frame(blob, stored_as((64, 65, 3)), 0)


def test_decode_frame_refuses_other_formats():
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="JPEG")
    with pytest.raises(InputError, match="frame 0 of episode ep1: not a readable PNG"):
        decode_frame(buffer.getvalue(), stored_as((4, 4, 3)), 0)
