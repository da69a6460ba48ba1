"""Loss weights by state distance from the demonstrations, on a real Valkey replay."""

import numpy as np
import pytest

from fleetloop.config import ConfigError, load_config
from fleetloop.learner.state_distance import ReferenceStates, StateDistanceWeights
from tests.learner.conftest import first_batch


def test_distance_is_to_the_nearest_reference_state_in_standard_units():
    reference = ReferenceStates(np.array([[0.0, 0.0], [2.0, 0.0], [4.0, 0.0]], np.float32))
    # dim 0: std sqrt(8/3); dim 1 never moves, so it is measured in STD_FLOOR units
    distances = reference.distance(np.array([[2.0, 0.0], [3.0, 0.0], [2.0, 0.01]], np.float32))
    np.testing.assert_allclose(distances, [0.0, np.sqrt(0.5 * 3 / 8), np.sqrt(0.5)], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="non-empty"):
        ReferenceStates(np.zeros((0, 2), np.float32))


def window(state, source="intervention", embodiment="so100"):
    return {"state": np.asarray(state, np.float32), "source": source, "embodiment": embodiment}


def test_windows_near_the_demonstrations_weigh_more_and_other_classes_keep_one(client, make_episode):
    client.write_episode("pretrain", make_episode(states=np.repeat(np.arange(6, dtype=np.float32)[:, None], 3, axis=1),
                                                  length=6, state_dim=3, source="demo"))
    weights = StateDistanceWeights(client, ["intervention"], ["pretrain"], strength=1.0, max_reference_states=100)
    windows = [window([0, 0, 0]), window([9, 9, 9]), window([30, 30, 30]), window([30, 30, 30], source="demo"),
               window([0, 0, 0], embodiment="gr1")]
    factors = weights.factors(windows)
    assert factors[0] > factors[1] > factors[2] > 0
    assert np.mean(factors[:3]) == pytest.approx(1.0), "the class keeps its share of the loss"
    assert factors[3:] == [1.0, 1.0], "another class, and an embodiment without reference states"
    assert StateDistanceWeights(client, ["intervention"], ["pretrain"], 0.0, 100).factors(windows)[:3] == [1.0] * 3


def test_refresh_reads_demonstrations_added_since(client, make_episode):
    client.write_episode("pretrain", make_episode(states=np.zeros((4, 3), np.float32), length=4, state_dim=3))
    weights = StateDistanceWeights(client, ["intervention"], ["pretrain"], 1.0, 100)
    windows = [window([0, 0, 0]), window([5, 5, 5])]
    before = weights.factors(windows)
    client.write_episode("pretrain", make_episode(states=np.full((4, 3), 5, np.float32), length=4, state_dim=3))
    assert weights.factors(windows) == before, "read once until refreshed"
    weights.refresh()
    assert weights.factors(windows) == pytest.approx([1.0, 1.0]), "both now sit on a demonstration"


def test_the_learner_multiplies_class_weights_by_distance_factors(valkey, demos, client, make_episode, tmp_path):
    far = make_episode(length=16, state_dim=4, action_dim=2, frame_steps=(0, 8), frame_shape=(64, 64),
                       embodiment=demos, source="intervention")
    far.states[:] = 5.0 * np.arange(16, dtype=np.float32)[:, None]  # each step farther from the demonstrations
    client.write_episode("corrections", far)
    batch, windows = first_batch(valkey.url, tmp_path, [
        "learner.batch_size=32", "replay.mixture={pretrain: 0.5, corrections: 0.5}",
        "learner.class_weights={intervention: 2}", "learner.distance_weights={classes: [intervention], strength: 3}"])
    weights = batch["sample_weight"].tolist()
    demo = [w for w, win in zip(weights, windows) if win["source"] == "demo"]
    corrections = [w for w, win in zip(weights, windows) if win["source"] == "intervention"]
    assert demo and set(demo) == {1.0}
    assert len(set(corrections)) > 1 and np.mean(corrections) == pytest.approx(2.0, rel=1e-5)


@pytest.mark.parametrize("override, message", [
    ("learner.distance_weights={classes: [nonsense]}", "unknown class"),
    ("learner.distance_weights={classes: [intervention], reference: [nowhere]}", "unknown table"),
    ("learner.distance_weights={classes: [intervention], strength: -1}", "strength"),
])
def test_bad_distance_weights_are_refused_by_name(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("smoke", [override])
