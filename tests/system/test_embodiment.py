"""Embodiment registry and layouts (GR00T's numbering and modality.json slices)."""

import numpy as np
import pytest

from fleetloop.system import EMBODIMENT_TAGS, EmbodimentLayout, embodiment_id, embodiment_layout, register_embodiment
from fleetloop.system.embodiment import embodiment_tag

GR1_SLICES = {
    "left_arm": (0, 7),
    "left_hand": (7, 13),
    "left_leg": (13, 19),
    "neck": (19, 22),
    "right_arm": (22, 29),
    "right_hand": (29, 35),
    "right_leg": (35, 41),
    "waist": (41, 44),
}


def test_registry_uses_gr00t_numbering():
    assert EMBODIMENT_TAGS["gr1"] == 24 and EMBODIMENT_TAGS["new_embodiment"] == 31
    assert embodiment_id("sim_arm") == 30 and embodiment_tag(24) == "gr1" and embodiment_tag(3) is None
    assert len(set(EMBODIMENT_TAGS.values())) == len(EMBODIMENT_TAGS)


def test_unknown_tag_names_known_tags():
    with pytest.raises(ValueError, match="'robot_x'.*gr1"):
        embodiment_id("robot_x")
    with pytest.raises(ValueError, match="'robot_x'"):
        embodiment_layout("robot_x")


def test_gr1_layout_matches_modality_json():
    layout = embodiment_layout("gr1")
    assert dict(layout.state) == dict(layout.action) == GR1_SLICES
    assert layout.raw_dim("state") == layout.raw_dim("action") == 44
    assert layout.model_dim("state") == 44 and layout.model_dim("action") == 26
    raw = np.arange(44.0)
    selected = layout.select("action", np.stack([raw, raw]))
    assert selected.shape == (2, 26)
    np.testing.assert_array_equal(selected[0], np.r_[0:13, 22:35])
    parts = layout.split("action", selected[0])
    assert list(parts) == ["left_arm", "left_hand", "right_arm", "right_hand"]
    np.testing.assert_array_equal(parts["right_hand"], np.arange(29.0, 35.0))


def test_sim_arm_layout():
    layout = embodiment_layout(30)
    assert (layout.raw_dim("state"), layout.raw_dim("action")) == (4, 2)
    assert layout.dim_modes("state") == ("min_max",) * 4
    assert embodiment_layout("new_embodiment") is None


def test_modes_per_key():
    layout = EmbodimentLayout(
        tag="gripper_bot",
        state={"arm": (0, 3), "gripper": (3, 4)},
        action={"arm": (0, 3), "gripper": (3, 4)},
        modes={"state.arm": "mean_std", "action.gripper": "binary"},
    )
    assert layout.dim_modes("state") == ("mean_std",) * 3 + ("min_max",)
    assert layout.dim_modes("action") == ("min_max",) * 3 + ("binary",)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"state": {"a": (0, 2), "b": (3, 4)}}, "state slices must cover", id="gap"),
        pytest.param({"action": {"a": (0, 2), "b": (1, 4)}}, "action slices must cover", id="overlap"),
        pytest.param({"action_keys": ("c",)}, r"action_keys \['c'\] are not action keys", id="keys"),
        pytest.param({"modes": {"state.a": "log"}}, r"modes\['state.a'\]='log'", id="mode"),
    ],
)
def test_bad_layouts(kwargs, message):
    args = {"tag": "bot", "state": {"a": (0, 2)}, "action": {"a": (0, 1)}} | kwargs
    with pytest.raises(ValueError, match=message):
        EmbodimentLayout(**args)


def test_register_embodiment_refuses_clashes():
    with pytest.raises(ValueError, match="clashes"):
        register_embodiment("my_bot", 24)
    with pytest.raises(ValueError, match="clashes"):
        register_embodiment("gr1", 5)


def test_scatter_puts_model_actions_back_into_the_raw_vector():
    layout = embodiment_layout("gr1")
    base = np.arange(44, dtype=np.float32)
    model = -layout.select("action", np.tile(base, (3, 1)))  # (3, 26) arms and hands, negated
    raw = layout.scatter("action", model, base)
    assert raw.shape == (3, 44)
    np.testing.assert_array_equal(layout.select("action", raw), model)
    untouched = np.r_[13:22, 35:44]  # legs, neck, waist keep the base values
    np.testing.assert_array_equal(raw[:, untouched], np.broadcast_to(base[untouched], (3, 18)))
