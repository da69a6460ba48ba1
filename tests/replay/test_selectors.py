"""Selectors in isolation: uniform, prioritized and fifo strategies (no server needed)."""

from collections import Counter

import numpy as np
import pytest

from fleetloop.replay.selectors import (
    SELECTORS,
    FifoSelector,
    PrioritizedSelector,
    UniformSelector,
    make_selector,
)


def _freqs(selector, n=20000, seed=0):
    counts = Counter(selector.sample(np.random.default_rng(seed), n))
    return {k: c / n for k, c in counts.items()}


def test_uniform_insert_delete_and_sample():
    sel = UniformSelector()
    for key in "abcd":
        sel.insert(key, 1.0)
    sel.delete("b")
    sel.delete("zz")  # unknown keys are ignored
    assert len(sel) == 3 and "b" not in sel and "d" in sel
    freqs = _freqs(sel)
    assert set(freqs) == {"a", "c", "d"}
    assert all(abs(f - 1 / 3) < 0.02 for f in freqs.values())


def test_prioritized_follows_priorities_and_updates():
    sel = PrioritizedSelector()
    for key, priority in {"a": 1.0, "b": 3.0, "c": 0.0}.items():
        sel.insert(key, priority)
    freqs = _freqs(sel)
    assert "c" not in freqs and abs(freqs["b"] - 0.75) < 0.02
    sel.update("c", 4.0)
    sel.delete("b")
    freqs = _freqs(sel)
    assert abs(freqs["c"] - 0.8) < 0.02 and sel.priority("c") == 4.0


def test_prioritized_exponent_and_all_zero_fall_back_to_uniform():
    sel = PrioritizedSelector(priority_exponent=2.0)
    sel.insert("a", 1.0)
    sel.insert("b", 2.0)
    assert abs(_freqs(sel)["b"] - 0.8) < 0.02
    zeros = PrioritizedSelector()
    for key in "xyz":
        zeros.insert(key, 0.0)
    assert all(abs(f - 1 / 3) < 0.02 for f in _freqs(zeros).values())


def test_prioritized_grows_past_initial_storage():
    sel = PrioritizedSelector()
    for i in range(100):
        sel.insert(str(i), float(i == 77))
    assert set(sel.sample(np.random.default_rng(0), 50)) == {"77"}


def test_fifo_returns_oldest():
    sel = FifoSelector()
    for key in "abc":
        sel.insert(key, 1.0)
    assert sel.sample(np.random.default_rng(0), 3) == ["a", "a", "a"]
    sel.delete("a")
    assert sel.sample(np.random.default_rng(0), 1) == ["b"]


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_empty_selector_raises(name):
    with pytest.raises(IndexError, match="empty"):
        make_selector(name).sample(np.random.default_rng(0), 1)


INVALID = [
    ("negative_priority", lambda: UniformSelector().insert("k", -1.0), "priority of 'k' must be finite and >= 0, got -1.0"),
    ("nan_priority", lambda: PrioritizedSelector().insert("k", float("nan")), "priority of 'k'"),
    ("negative_exponent", lambda: PrioritizedSelector(-1.0), "priority_exponent must be finite and >= 0, got -1.0"),
    ("unknown_name", lambda: make_selector("lifo"), r"unknown sampler 'lifo'; expected one of \['fifo', 'prioritized', 'uniform'\]"),
]


@pytest.mark.parametrize("make, match", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_selector_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
