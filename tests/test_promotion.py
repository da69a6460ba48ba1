"""PromotionGate: which evaluated versions the fleet may run."""

from fleetloop.promotion import PromotionGate


def _evaluated(version: int, success: float) -> dict:
    return {"version": version, "success_rate": success}


def test_a_version_clearly_worse_than_the_fleets_is_refused_and_one_within_the_margin_admitted():
    gate = PromotionGate(margin=0.1)
    gate.promote(1)
    assert gate.is_fleet_version(_evaluated(1, 0.6))
    gate.record_fleet_success(0.6)
    assert not gate.admits(_evaluated(2, 0.0))
    assert "version 2 not promoted: success 0.00 is below the fleet's version 1 (0.60)" in gate.refusal(_evaluated(2, 0.0))
    assert not gate.admits(_evaluated(3, 0.45))
    assert gate.admits(_evaluated(4, 0.5)), "within the margin: the evaluator's noise is not a regression"
    gate.promote(4, 0.5)
    assert (gate.version, gate.success, gate.promoted) == (4, 0.5, [1, 4])


def test_the_bar_is_the_fleet_versions_own_figure_not_the_best_seen():
    gate = PromotionGate(margin=0.0)
    gate.promote(1, 0.9)
    gate.promote(2, 0.7)
    assert gate.admits(_evaluated(3, 0.7)) and not gate.admits(_evaluated(3, 0.65))


def test_any_newer_version_replaces_a_fleet_version_not_yet_evaluated_and_none_goes_back():
    gate = PromotionGate(margin=0.0)
    assert gate.admits(_evaluated(1, 0.0)), "no fleet version yet: the first evaluated one starts it"
    gate.promote(3)
    assert gate.admits(_evaluated(4, 0.0))
    assert not gate.admits(_evaluated(2, 1.0)) and not gate.admits(_evaluated(3, 1.0))
