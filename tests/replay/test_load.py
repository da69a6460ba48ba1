"""Load (issue 8, item 2): 32 concurrent writers and 4 samplers on one real Valkey.

A fixed amount of work, so that what is asserted does not depend on timing: each writer
writes EPISODES_PER_WRITER episodes into a table whose capacity is far below the total, and
each sampler samples until every writer is done (and at least MIN_BATCHES batches).

Writers are threads of the test process, each with its own ReplayClient (connection): a
thread waiting for its reply releases the GIL, so up to 32 writes are in flight at once
(checked) and the server runs their scripts and evictions interleaved. Samplers are
processes, each with its own client, as learner ranks are: as threads beside 32 writers they
waited up to a second for the GIL between two commands of one sample (measured), so a table
of 128 episodes turned over between a sampler's index refresh and its read: the test
measured the harness, not the replay.

Throughput under this load is measured by bench/load.py, not here.
"""

import importlib.util
import multiprocessing
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, wait
from functools import cache
from multiprocessing.managers import BarrierProxy, EventProxy
from pathlib import Path

import numpy as np
import pytest

from fleetloop.replay import (
    EmbeddedValkey,
    Episode,
    ReplayClient,
    ReplayTimeoutError,
    ReplayUnavailableError,
    TableConfig,
    WindowSampler,
    keys,
    scripts,
)

def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_load", Path(__file__).resolve().parents[2] / "bench" / "load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOAD_BENCH = _load_bench()
"""bench/load.py: its probe_sizes measure what this test's memory bound is made of."""

WRITERS = 32
EPISODES_PER_WRITER = 40
SAMPLERS = 4
MIN_BATCHES = 20
"""Each sampler samples at least this many batches, and on until every writer is done."""
BATCH = 8
CAPACITY = 128
"""A tenth of the WRITERS * EPISODES_PER_WRITER = 1280 episodes written."""
TABLE = "rollouts"
PROBE_TABLE = "pretrain"
LENGTH, STATE_DIM, ACTION_DIM, HORIZON = 8, 4, 3, 4
FRAME_STEPS = (0, 4)
FRAME_SHAPE = (64, 64, 3)
"""Noise frames: each PNG is ~12 kB, an episode ~26 kB, far above the per-key overhead."""
REFRESH_S = 1.0
"""The samplers' index refresh period (the learner's default, replay.refresh_s)."""
MAX_ATTEMPTS = 5
"""Tries of one episode write on transient errors (timeout, connection lost)."""
POLL_S = 0.01
"""Pause between the monitor's reads of the table size and the server's memory."""
SYNC_TIMEOUT_S = 60.0
"""Longest wait of a process or thread for another one to get ready."""


@pytest.fixture
def valkey_no_fsync(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    """A Valkey server on a free port writing its AOF at every event loop (appendfsync no),
    so the AOF buffer holds at most one loop's writes. With everysec, a slow fsync postpones
    those writes up to 2 s and the buffer grows by as much: bench/load.py runs that setting."""
    with EmbeddedValkey(tmp_path / "replay", appendfsync="no") as server:
        yield server


@cache
def episode_for(number: int) -> Episode:
    """Episode ``number``, id ``load-<number>``; its contents follow from the number alone,
    so a sampled window can be checked against what was written."""
    rng = np.random.default_rng(number)
    return Episode(
        states=rng.normal(size=(LENGTH, STATE_DIM)).astype(np.float32),
        actions=rng.normal(size=(LENGTH, ACTION_DIM)).astype(np.float32),
        frames={s: rng.integers(0, 256, FRAME_SHAPE, dtype=np.uint8) for s in FRAME_STEPS},
        instruction="stack the cubes",
        embodiment="so100",
        source="load",
        policy_version=0,
        actor_id=f"writer-{number // EPISODES_PER_WRITER}",
        intervened=np.zeros(LENGTH, bool),
        rewards=np.zeros(LENGTH, np.float32),
        success=True,
        episode_id=f"load-{number:06d}",
    )


def episode_key_counts(client: ReplayClient) -> dict[str, int]:
    """Episode id -> number of ``fl:ep:{<id>}:*`` keys on the server."""
    found: dict[str, int] = {}
    for key in client.redis.scan_iter(match=keys.EPISODE_KEY_PREFIX + "*", count=1000):
        episode_id = key.decode()[len(keys.EPISODE_KEY_PREFIX):].split("}", 1)[0]
        found[episode_id] = found.get(episode_id, 0) + 1
    return found


def sample_until_writers_done(
    url: str, seed: int, connected: BarrierProxy, first_insert: EventProxy,
    writers_done: EventProxy,
) -> tuple[set[str], int]:
    """A sampler process: connect, sample BATCH windows at a time from the first insert until
    the writers are done, and check each window against the episode written under its id.

    Returns:
        The episode ids sampled and the number of windows.
    """
    with ReplayClient(url) as client:
        sampler = WindowSampler(client, {TABLE: 1.0}, HORIZON, seed=seed, refresh_s=REFRESH_S)
        connected.wait(SYNC_TIMEOUT_S)
        assert first_insert.wait(SYNC_TIMEOUT_S)
        batches, seen = 0, set()
        while batches < MIN_BATCHES or not writers_done.is_set():
            for window in sampler.sample(BATCH):
                episode = episode_for(int(window["episode_id"].removeprefix("load-")))
                t = window["step"]
                chunk = episode.actions[np.minimum(np.arange(t, t + HORIZON), LENGTH - 1)]
                assert window["image"].shape == FRAME_SHAPE
                assert window["state"].shape == (STATE_DIM,)
                assert window["action"].shape == (HORIZON, ACTION_DIM)
                np.testing.assert_array_equal(window["image"], episode.frames[t])
                np.testing.assert_array_equal(window["state"], episode.states[t])
                np.testing.assert_array_equal(window["action"], chunk)
                seen.add(window["episode_id"])
            batches += 1
    return seen, batches * BATCH


class Writers:
    """The writer threads' shared record: acknowledged ids per writer, retries, and the
    peak number of writes in flight at once."""

    def __init__(self, first_insert: threading.Event) -> None:
        self.lock = threading.Lock()
        self.acknowledged: list[list[str]] = [[] for _ in range(WRITERS)]
        self.retries = 0
        self.in_flight = self.peak_in_flight = 0
        self.first_insert = first_insert

    def write(self, client: ReplayClient, writer: int) -> None:
        """Write the writer's episodes in order; retry transient errors with the same episode
        (the write is idempotent on its id) and record only acknowledged ids."""
        for k in range(EPISODES_PER_WRITER):
            episode = episode_for(writer * EPISODES_PER_WRITER + k)
            for attempt in range(1, MAX_ATTEMPTS + 1):
                with self.lock:
                    self.in_flight += 1
                    self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
                try:
                    client.write_episode(TABLE, episode)
                    break
                except (ReplayTimeoutError, ReplayUnavailableError):
                    if attempt == MAX_ATTEMPTS:
                        raise
                    with self.lock:
                        self.retries += 1
                finally:
                    with self.lock:
                        self.in_flight -= 1
            self.acknowledged[writer].append(episode.episode_id)
            self.first_insert.set()


class Monitor:
    """Reads the table's size and the server's used_memory every POLL_S until stopped."""

    def __init__(self, client: ReplayClient) -> None:
        self.client = client
        self.stop = threading.Event()
        self.max_table_size = self.peak_used_memory = 0
        self.inserts_seen: list[int] = []

    def run(self) -> None:
        while True:
            pipe = self.client.redis.pipeline(transaction=False)
            pipe.zcard(keys.table_items(TABLE))
            pipe.hmget(keys.table_counters(TABLE), "episodes", "seq")
            pipe.info("memory")
            items, (episodes, seq), memory = pipe.execute()
            self.max_table_size = max(self.max_table_size, items, int(episodes or 0))
            self.peak_used_memory = max(
                self.peak_used_memory, memory["used_memory"], memory["used_memory_peak"])
            self.inserts_seen.append(int(seq or 0))
            if self.stop.wait(POLL_S):
                return


@pytest.mark.integration
def test_concurrent_writers_and_samplers_keep_every_episode_and_stay_bounded(valkey_no_fsync):
    url = valkey_no_fsync.url
    total = WRITERS * EPISODES_PER_WRITER
    fork = multiprocessing.get_context("fork")  # before any thread or client of this test
    with fork.Manager() as manager, ProcessPoolExecutor(SAMPLERS, mp_context=fork) as processes:
        connected = manager.Barrier(SAMPLERS + 1)
        first_insert, writers_done = manager.Event(), manager.Event()
        sampling = [
            processes.submit(sample_until_writers_done, url, seed, connected,
                             first_insert, writers_done)
            for seed in range(SAMPLERS)
        ]
        admin = ReplayClient(url, tables={TABLE: TableConfig(capacity=CAPACITY)})
        writer_clients = [ReplayClient(url) for _ in range(WRITERS)]
        # The probe (another table) gives the sizes the bound is made of (noise frames: every
        # episode's are the same to a few bytes); loading the samplers' scripts puts their
        # bodies in the baseline, as are all the connections.
        probe = episode_for(total)
        admin.write_episode(PROBE_TABLE, probe)
        for script in (scripts.ACQUIRE_SAMPLES, scripts.READ_WINDOWS):
            admin.redis.script_load(script)
        sizes = LOAD_BENCH.probe_sizes(admin, probe, TABLE, HORIZON)
        connected.wait(SYNC_TIMEOUT_S)
        baseline = admin.redis.info("memory")["used_memory"]
        memory_bound = LOAD_BENCH.memory_bound(
            baseline, sizes, capacity=CAPACITY, writers=WRITERS, samplers=SAMPLERS, batch_size=BATCH,
            evicted=total - CAPACITY)

        writers, monitor = Writers(first_insert), Monitor(admin)
        with ThreadPoolExecutor(WRITERS + 1) as threads:
            monitoring = threads.submit(monitor.run)
            writing = [threads.submit(writers.write, c, w) for w, c in enumerate(writer_clients)]
            wait(writing)
            writers_done.set()
            wait(sampling)
            monitor.stop.set()
            for future in (*writing, monitoring):
                future.result()  # re-raises what a writer or the monitor raised
        sampled = [future.result() for future in sampling]  # or what a sampler raised

    acknowledged = [eid for ids in writers.acknowledged for eid in ids]
    stored = admin.episode_ids(TABLE)
    evicted = set(acknowledged) - set(stored)
    stats = admin.table_stats(detailed=True)[TABLE]
    assert len(acknowledged) == len(set(acknowledged)) == total
    assert len(stored) == len(set(stored)) == CAPACITY
    assert set(stored) <= set(acknowledged)
    assert stats["inserts"] == total, "an acknowledged episode was inserted twice"
    assert stats["evicted"] == len(evicted) == total - CAPACITY
    assert stats["episodes"] == CAPACITY
    assert stats["sources"] == {"load": CAPACITY}
    assert [info.seq for info in admin.episode_infos(TABLE)] == list(
        range(total - CAPACITY + 1, total + 1))
    # FIFO: a writer's episodes get increasing seqs, so what it still has stored is the
    # end of what it wrote.
    for ids in writers.acknowledged:
        kept = [eid for eid in ids if eid not in evicted]
        assert kept == ids[len(ids) - len(kept):]
    # Evicted episodes leave no key behind; stored ones have all of theirs.
    per_episode = 1 + len(keys.EPISODE_ARRAYS) - 1 + len(FRAME_STEPS)  # unlabelled episodes: no label key
    assert episode_key_counts(admin) == {
        eid: per_episode for eid in [*stored, probe.episode_id]}

    assert monitor.max_table_size <= CAPACITY
    # Without eviction the table alone would grow well past the bound.
    assert memory_bound - baseline < sizes["episode"] * total / 4
    assert any(0 < n < total for n in monitor.inserts_seen), "the monitor never read mid-run"
    assert monitor.peak_used_memory <= memory_bound, (monitor.peak_used_memory, memory_bound)
    assert writers.peak_in_flight > 1, "the writers never overlapped"

    assert set().union(*(ids for ids, _ in sampled)) <= set(acknowledged)
    windows = sum(n for _, n in sampled)
    assert windows >= SAMPLERS * MIN_BATCHES * BATCH
    assert stats["samples"] == windows
    for client in (admin, *writer_clients):
        client.close()
    print(f"\nload: {total} episodes acknowledged, {writers.retries} retries, {windows} "
          f"windows, peak {writers.peak_in_flight} writes in flight, peak used_memory "
          f"{monitor.peak_used_memory} B (baseline {baseline}, bound {memory_bound}, "
          f"sizes {sizes})")


def test_sampler_refreshes_an_index_that_eviction_left_behind(client, make_episode):
    """Every indexed episode is evicted behind a sampler's back: the sample re-reads the index
    instead of redrawing from stale entries until it gives up (issue 8 load finding)."""
    client.configure_table(TABLE, TableConfig(capacity=20))
    for _ in range(20):
        client.write_episode(TABLE, make_episode())
    sampler = WindowSampler(client, {TABLE: 1.0}, horizon=1, seed=0, refresh_s=3600)
    sampler.sample(1)
    new = [make_episode() for _ in range(20)]
    for ep in new:
        client.write_episode(TABLE, ep)
    window, = sampler.sample(1)
    assert window["episode_id"] in {ep.episode_id for ep in new}
    assert sampler.num_episodes() == {TABLE: 20}
