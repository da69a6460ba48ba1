"""RateLimiter presets (named invalid cases) and their semantics against a real Valkey."""

import math
import threading
import time

import pytest

from fleetloop.replay import (
    MinSize,
    RateLimitedError,
    RateLimiter,
    ReplayClient,
    SampleToInsertRatio,
    TableConfig,
    WindowSampler,
)

INVALID_PRESETS = [
    ("ratio_zero_spi", lambda: SampleToInsertRatio(0.0, 1, 2.0), "samples_per_insert must be"),
    ("ratio_nan_spi", lambda: SampleToInsertRatio(math.nan, 1, 2.0), "samples_per_insert must be"),
    ("ratio_small_buffer", lambda: SampleToInsertRatio(4.0, 1, 3.0), r"error_buffer must be >= max\(1.0, samples_per_insert=4\), got 3.0"),
    ("ratio_inf_buffer", lambda: SampleToInsertRatio(1.0, 1, math.inf), "error_buffer must be"),
    ("ratio_min_size_zero", lambda: SampleToInsertRatio(1.0, 0, 2.0), "min_size_to_sample must be an int >= 1, got 0"),
    ("min_size_zero", lambda: MinSize(0), "min_size_to_sample must be an int >= 1, got 0"),
    ("min_size_float", lambda: MinSize(2.5), "min_size_to_sample must be an int >= 1, got 2.5"),
    ("min_size_bool", lambda: MinSize(True), "min_size_to_sample must be an int >= 1, got True"),
    ("diffs_reversed", lambda: RateLimiter(1.0, 1, 5.0, 1.0), r"min_diff \(5.0\) must be <= max_diff \(1.0\)"),
    ("diff_nan", lambda: RateLimiter(1.0, 1, math.nan, 1.0), "must not be NaN"),
]


@pytest.mark.parametrize(
    "make, match", [c[1:] for c in INVALID_PRESETS], ids=[c[0] for c in INVALID_PRESETS]
)
def test_invalid_presets_name_argument_and_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_presets_set_reverb_diffs():
    ratio = SampleToInsertRatio(samples_per_insert=4.0, min_size_to_sample=10, error_buffer=8.0)
    assert (ratio.min_diff, ratio.max_diff, ratio.max_samples_per_call) == (32.0, 48.0, 16.0)
    size = MinSize(5)
    assert (size.min_diff, size.max_diff) == (-math.inf, math.inf)
    assert RateLimiter.from_fields(size.to_fields()) == RateLimiter(1.0, 5, -math.inf, math.inf)
    assert RateLimiter.from_fields({}) is None


def _configure(client, **fields):
    client.configure_table("rollouts", TableConfig(**fields))


def test_inserts_block_when_samplers_fall_behind(client, make_episode):
    _configure(client, samples_per_insert=2.0, min_size_to_sample=1, error_buffer=2.0)
    client.write_episode("rollouts", make_episode())  # filling up to min size is free
    client.write_episode("rollouts", make_episode())  # diff 4 <= max_diff 4
    start = time.monotonic()
    with pytest.raises(RateLimitedError) as caught:
        client.write_episode("rollouts", make_episode(), timeout_s=0.2)
    assert 0.2 <= time.monotonic() - start < 1.0
    message = str(caught.value)
    for part in ("'rollouts'", client.url, "an insert", "samples_per_insert=2",
                 "inserts=2, samples=0, size=2"):
        assert part in message
    assert client.table_stats()["rollouts"]["episodes"] == 2


def test_samples_wait_for_min_size_and_inserts(client, make_episode):
    _configure(client, samples_per_insert=1.0, min_size_to_sample=2, error_buffer=3.0)
    client.write_episode("rollouts", make_episode())
    sampler = WindowSampler(client, {"rollouts": 1.0}, horizon=1, seed=0,
                            rate_limit_timeout_s=0.2)
    with pytest.raises(RateLimitedError, match=r"a sample of 1 windows.*size=1"):
        sampler.sample(1)
    client.write_episode("rollouts", make_episode())
    sampler.refresh()
    assert len(sampler.sample(3)) == 3  # diff = 2 * 1 - 0 - 3 >= min_diff -1
    with pytest.raises(RateLimitedError, match="inserts=2, samples=3"):
        sampler.sample(1)


def test_counts_are_shared_and_a_blocked_sampler_resumes(valkey, client, make_episode):
    _configure(client, samples_per_insert=1.0, min_size_to_sample=1, error_buffer=1.0)
    client.write_episode("rollouts", make_episode())
    with ReplayClient(valkey.url) as other:
        sampler = WindowSampler(other, {"rollouts": 1.0}, horizon=1, seed=0,
                                rate_limit_timeout_s=5.0)
        sampler.sample(1)  # diff 1 * 1 - 0 - 1 = 0 >= min_diff 0
        writer = threading.Timer(0.2, lambda: client.write_episode("rollouts", make_episode()))
        writer.start()
        start = time.monotonic()
        sampler.sample(1)  # waits for the insert made by another client
        writer.join()
    assert time.monotonic() - start >= 0.15
    stats = client.table_stats(detailed=True)["rollouts"]
    assert (stats["inserts"], stats["samples"]) == (2, 2)


def test_batch_larger_than_the_buffer_is_refused_up_front(client, make_episode):
    _configure(client, samples_per_insert=1.0, min_size_to_sample=1, error_buffer=2.0)
    client.write_episode("rollouts", make_episode())
    sampler = WindowSampler(client, {"rollouts": 1.0}, horizon=1)
    with pytest.raises(ValueError, match="samples 5 windows of table 'rollouts'.*error_buffer"):
        sampler.sample(5)


def test_min_size_alone_never_blocks_inserts(client, make_episode):
    _configure(client, min_size_to_sample=3)
    assert client.table_config("rollouts").rate_limiter() == MinSize(3)
    for _ in range(5):
        client.write_episode("rollouts", make_episode(), timeout_s=0.1)
    assert len(WindowSampler(client, {"rollouts": 1.0}, horizon=1).sample(50)) == 50


def test_a_fleet_that_must_not_stop_paces_samples_only(client, make_episode):
    """block_inserts False: inserts never wait however far the samplers lag; samples still do."""
    _configure(client, samples_per_insert=2.0, min_size_to_sample=1, error_buffer=2.0, block_inserts=False)
    assert client.table_config("rollouts").block_inserts is False
    for _ in range(6):  # past max_diff 4 of the blocking limiter
        client.write_episode("rollouts", make_episode(), timeout_s=0.1)
    sampler = WindowSampler(client, {"rollouts": 1.0}, horizon=1, seed=0, rate_limit_timeout_s=0.2)
    taken = sum(len(sampler.sample(2)) for _ in range(6))  # 6 inserts * 2 - min_diff 0: 12 samples
    assert taken == 12
    with pytest.raises(RateLimitedError, match="a sample of 2 windows"):
        sampler.sample(2)
