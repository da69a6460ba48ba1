"""Promotion: a publisher that promotes only evaluated versions tells the fleet of those alone,
over real gRPC, while the evaluator follows every version."""

import pytest
import torch

from fleetloop.learner.publisher import PROMOTIONS_MISSED, WeightPublisher
from tests.weights.conftest import WAIT_S


@pytest.fixture
def gated():
    pub = WeightPublisher(chunk_bytes=4096, max_message_bytes=1 << 20, keep_versions=2, auto_promote=False)
    pub.start()
    yield pub
    pub.stop(grace=None)


def _state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((64,), value)}


def test_the_fleet_runs_promoted_versions_only_and_the_evaluator_every_one(gated, subscribe):
    fleet, fleet_seen = subscribe(gated.port, "actor-0", promoted_only=True)
    evaluator, evaluator_seen = subscribe(gated.port, "evaluator")
    gated.publish(_state(1.0))
    assert gated.promote(1)
    assert fleet.wait_for_version(1, WAIT_S)
    gated.publish(_state(2.0))
    gated.publish(_state(3.0))
    assert evaluator.wait_for_version(3, WAIT_S)
    assert not fleet.wait_for_version(2, 0.5), "the fleet was told of a version nobody promoted"
    assert fleet.latest_announced == 1  # policy lag counts against the promoted version
    assert gated.promote(3)
    assert fleet.wait_for_version(3, WAIT_S)
    assert fleet_seen.versions == [1, 3]
    assert torch.equal(fleet_seen.applied[-1][1]["w"], _state(3.0)["w"])
    assert 3 in evaluator_seen.versions


def test_the_promoted_version_and_a_held_one_and_its_successors_outlive_keep_versions(gated):
    gated.publish(_state(1.0))
    assert gated.promote(1)
    for value in range(2, 4):
        gated.publish(_state(float(value)))
    assert gated.hold(3)
    for value in range(4, 8):
        gated.publish(_state(float(value)))
    # the evaluator asked for 3 may have taken 4 or 5 by the time it starts: all stay
    assert gated.held_versions() == [1, 3, 4, 5, 6, 7]
    assert gated.promote(5)
    assert gated.held_versions() == [3, 4, 5, 6, 7]
    gated.release(3)
    assert gated.held_versions() == [5, 6, 7]


def test_a_version_evicted_before_its_promotion_is_counted_not_promoted(gated):
    for value in range(1, 5):
        gated.publish(_state(float(value)))
    missed = PROMOTIONS_MISSED._value.get()
    assert gated.promote(1) is False
    assert PROMOTIONS_MISSED._value.get() == missed + 1
    assert gated.promoted_version == 0
    assert gated.hold(1) is False


@pytest.mark.parametrize("version, message", [(9, "never published"), (0, "never published"),
                                              (1, "older than the promoted version 2")])
def test_promotions_only_move_forward_through_published_versions(gated, version, message):
    for value in range(1, 4):
        gated.publish(_state(float(value)))
    assert gated.promote(2)
    with pytest.raises(ValueError, match=message):
        gated.promote(version)
    assert gated.promoted_version == 2


def test_a_default_publisher_promotes_as_it_publishes(publisher, subscribe):
    fleet, seen = subscribe(publisher.port, "actor-0", promoted_only=True)
    publisher.publish(_state(1.0))
    publisher.publish(_state(2.0))
    assert fleet.wait_for_version(2, WAIT_S)
    assert publisher.promoted_version == 2
