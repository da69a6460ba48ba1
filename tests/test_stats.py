"""Wilson intervals and the exact McNemar test against values worked by hand."""

import pytest

from fleetloop.stats import mcnemar_exact, wilson


@pytest.mark.parametrize("successes, n, interval", [(0, 10, [0.0, 0.2775]), (5, 10, [0.2366, 0.7634]),
                                                    (4, 4, [0.5101, 1.0]), (43, 100, [0.3373, 0.5278])])
def test_wilson_interval(successes, n, interval):
    assert wilson(successes, n) == interval


def test_mcnemar_counts_only_the_discordant_pairs():
    assert mcnemar_exact([True] * 4 + [False], [False] * 5) == 0.125  # 4 discordant, all one way: 2 / 2^4
    assert mcnemar_exact([True, False, True], [True, False, True]) == 1.0
    assert mcnemar_exact([True, False], [False, True]) == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact([True], [True, False])
