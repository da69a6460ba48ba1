"""Replay under load: concurrent writers and samplers on one Valkey with FIFO eviction.

Starts an embedded Valkey (AOF on, appendfsync everysec, as a run uses it) in a temporary
directory and a table whose capacity is far below what the run writes. Writers are threads
of this process, each with its own client, writing episodes with fresh ids and retrying
transient errors with the same episode; samplers are processes (as learner ranks are: as
threads beside the writers they wait on the GIL between the commands of one sample), each
with its own client and WindowSampler, taking batches with frames left encoded.

The run is ROUNDS rounds of three slices: one writer alone, one sampler alone (the same-run
baselines), then every writer and sampler together. Rates count the operations that start
and end within a slice. A monitor reads the table's size and the server's memory
throughout; at the end every acknowledged episode must be stored or evicted (once), and the
peak of INFO used_memory is set against a bound derived from the capacity and the sizes of
an episode, its write request and a sampled batch (see memory_bound). The bound assumes the
AOF buffer is written out at every event loop; with everysec a slow fsync postpones that up
to 2 s, so the run reports ``within_memory_bound`` rather than failing. Logs go to stderr;
the last stdout line is one JSON object.

    python bench/load.py [--quick] [--writers 32] [--samplers 4] [--seconds 60] ...
"""

import argparse
import json
import logging
import multiprocessing
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing.managers import BarrierProxy, ValueProxy
from pathlib import Path

import numpy as np

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

logger = logging.getLogger("bench.load")

TABLE = "rollouts"
PROBE_TABLE = "pretrain"
STATE_DIM = ACTION_DIM = 44
HORIZON = 16
ROUNDS = 3
"""Each kind of slice runs this many times, interleaved, so background load hits all alike."""
BASELINE_SHARE = 0.2
"""A baseline slice lasts this fraction of a load slice."""
REFRESH_S = 1.0
"""The samplers' index refresh period (the learner's default, replay.refresh_s)."""
MAX_ATTEMPTS = 5
"""Tries of one episode write on transient errors (timeout, connection lost)."""
IDLE_S = 0.005
"""Pause of a writer or sampler outside its slices."""
POLL_S = 0.05
"""Pause between the monitor's reads."""
SYNC_TIMEOUT_S = 60.0
"""Longest wait for the sampler processes to connect."""
IOBUF_BYTES = 16 * 1024
"""Bytes Valkey reads from a client at a time (PROTO_IOBUF_LEN)."""
IDLE, STOP = -1, -2
"""Values of the current slice index between slices and at the end."""
EVICTED_PROBE = 1024
"""Ids in the throw-away record probe_sizes measures (past 128 a zset is a skiplist, like
a real record)."""


def make_episode(frames: dict[int, np.ndarray], length: int, rng: np.random.Generator) -> Episode:
    """An episode with a fresh id carrying ``frames``."""
    return Episode(
        states=rng.normal(size=(length, STATE_DIM)).astype(np.float32),
        actions=rng.normal(size=(length, ACTION_DIM)).astype(np.float32),
        frames=frames,
        instruction="pick the pear from the counter and place it in the plate",
        embodiment="gr1",
        source="bench",
        policy_version=0,
        actor_id="bench",
        intervened=np.zeros(length, bool),
        rewards=np.zeros(length, np.float32),
        success=True,
    )


def noise_frames(args: argparse.Namespace, seed: int) -> dict[int, np.ndarray]:
    """Frames at every ``frame_every``-th step: noise, so every PNG has the same size."""
    rng = np.random.default_rng(seed)
    shape = (args.frame_size, args.frame_size, 3)
    return {s: rng.integers(0, 256, shape, dtype=np.uint8)
            for s in range(0, args.steps, args.frame_every)}


def resp_size(parts: list) -> int:
    """Bytes of a RESP array of bulk strings (a request, or a reply of strings)."""
    encoded = [p if isinstance(p, bytes) else str(p).encode() for p in parts]
    return len(f"*{len(encoded)}\r\n") + sum(len(f"${len(p)}\r\n") + len(p) + 2 for p in encoded)


def active(kind: str, worker: int, role: str) -> bool:
    """Whether ``worker`` (a "writer" or "sampler") works in a slice of ``kind``."""
    return kind == "load" or (kind == f"single_{role}" and worker == 0)


class Writers:
    """Writer threads: each writes episodes while its slice is on, counting per slice the
    writes acknowledged within it, and records every acknowledged id."""

    def __init__(self, clients: list[ReplayClient], kinds: list[str], args: argparse.Namespace):
        self.clients, self.kinds, self.args = clients, kinds, args
        self.current = IDLE
        self.acknowledged: list[list[str]] = [[] for _ in clients]
        self.per_slice = [[0] * len(kinds) for _ in clients]
        self.retries = [0] * len(clients)

    def run(self, writer: int) -> None:
        client, rng = self.clients[writer], np.random.default_rng(writer)
        frames = noise_frames(self.args, seed=writer)
        while (k := self.current) != STOP:
            if k == IDLE or not active(self.kinds[k], writer, "writer"):
                time.sleep(IDLE_S)
                continue
            episode = make_episode(frames, self.args.steps, rng)
            for attempt in range(1, MAX_ATTEMPTS + 1):
                try:
                    client.write_episode(TABLE, episode)
                    break
                except (ReplayTimeoutError, ReplayUnavailableError):
                    if attempt == MAX_ATTEMPTS:
                        raise
                    self.retries[writer] += 1
            self.acknowledged[writer].append(episode.episode_id)
            if self.current == k:
                self.per_slice[writer][k] += 1


def run_sampler(url: str, sampler_index: int, kinds: list[str], current: ValueProxy,
                connected: BarrierProxy, batch_size: int) -> tuple[list[int], set[str]]:
    """A sampler process: sample batches while its slice is on and check their shapes.

    Returns:
        Windows per slice (sample calls started and ended within it) and the ids sampled.
    """
    with ReplayClient(url) as client:
        sampler = WindowSampler(client, {TABLE: 1.0}, HORIZON, seed=sampler_index,
                                refresh_s=REFRESH_S)
        connected.wait(SYNC_TIMEOUT_S)
        windows, seen = [0] * len(kinds), set()
        while (k := current.value) != STOP:
            if k == IDLE or not active(kinds[k], sampler_index, "sampler"):
                time.sleep(IDLE_S)
                continue
            batch = sampler.sample_batch(batch_size, decode_images=False)
            shapes = (batch["state"].shape, batch["action"].shape, len(batch["image_png"]))
            if shapes != ((batch_size, STATE_DIM), (batch_size, HORIZON, ACTION_DIM), batch_size):
                raise RuntimeError(f"sampled batch of shapes {shapes}")
            seen.update(batch["episode_id"])
            if current.value == k:
                windows[k] += batch_size
    return windows, seen


class Monitor:
    """Reads the table's size and the server's used_memory every POLL_S until stopped."""

    def __init__(self, client: ReplayClient) -> None:
        self.client = client
        self.stop = threading.Event()
        self.max_table_size = self.peak_used_memory = 0

    def run(self) -> None:
        while not self.stop.wait(POLL_S):
            pipe = self.client.redis.pipeline(transaction=False)
            pipe.zcard(keys.table_items(TABLE))
            pipe.info("memory")
            items, memory = pipe.execute()
            self.max_table_size = max(self.max_table_size, items)
            self.peak_used_memory = max(
                self.peak_used_memory, memory["used_memory"], memory["used_memory_peak"])


def probe_sizes(client: ReplayClient, probe: Episode, table: str, horizon: int) -> dict[str, int]:
    """Sizes in bytes of the stored ``probe`` (MEMORY USAGE of its keys, allocator overhead
    included), its write request to ``table``, a sampled window's reply (``horizon`` actions),
    a sampler's index reply per episode (its id and meta) and one entry of a table's record of
    evicted ids (measured on a throw-away record of EVICTED_PROBE ids as long as the probe's).
    tests/replay/test_load.py derives its memory bound from the same figures."""
    eid = probe.episode_id
    episode_keys = [keys.episode_key(eid, name) for name in ("meta", *keys.EPISODE_ARRAYS)]
    episode_keys += [keys.frame_key(eid, s) for s in probe.frames]
    script_keys, script_args, _ = scripts.write_episode_request(table, probe, 1.0)
    pngs = [client.redis.get(keys.frame_key(eid, s)) for s in probe.frames]
    meta = client.redis.hmget(keys.episode_key(eid, "meta"), keys.META_FIELDS)
    state_dim, action_dim = probe.states.shape[1], probe.actions.shape[1]
    record = keys.PREFIX + "probe:evicted"
    now_ms = int(time.time() * 1000)
    client.redis.zadd(record, {f"{i:0{len(eid)}d}": now_ms + i for i in range(EVICTED_PROBE)})
    record_bytes = client.redis.memory_usage(record, samples=0)
    client.redis.delete(record)
    return {
        "episode": sum(client.redis.memory_usage(k, samples=0) or 0 for k in episode_keys),  # no label key: 0
        "request": resp_size([b"EVALSHA", b"0" * 40, len(script_keys), *script_keys,
                              *script_args]),
        "window": resp_size([b"0" * 4 * state_dim, b"0" * 4 * horizon * action_dim,
                             max(pngs, key=len)]),
        "index_entry": resp_size([eid]) + resp_size(meta),
        "evicted_id": -(-record_bytes // EVICTED_PROBE),
    }


def episode_sizes(client: ReplayClient, args: argparse.Namespace) -> dict[str, int]:
    """Write a probe episode (to PROBE_TABLE) and measure its probe_sizes."""
    frames = noise_frames(args, seed=args.writers)  # writers use seeds 0..writers-1
    probe = make_episode(frames, args.steps, np.random.default_rng(args.writers))
    client.write_episode(PROBE_TABLE, probe)
    return probe_sizes(client, probe, TABLE, HORIZON)


def memory_bound(baseline: int, sizes: dict[str, int], *, capacity: int, writers: int, samplers: int,
                 batch_size: int, evicted: int) -> int:
    """Highest used_memory a run may reach if eviction keeps the table at its ``capacity`` after
    ``evicted`` evictions (all within the table's evicted_id_ttl_s)."""
    return (
        baseline
        # stored episodes: a write stores its episode, then evicts the oldest
        + sizes["episode"] * (capacity + 1)
        # the record of evicted ids
        + sizes["evicted_id"] * evicted
        # per writer one request in flight: its query buffer, grown by doubling while read
        # IOBUF_BYTES at a time, and its script's effects in the AOF buffer (written out once
        # per event loop, which may run every writer's script)
        + writers * (2 * (sizes["request"] + IOBUF_BYTES) + sizes["request"])
        # the argv of the one script running
        + sizes["request"]
        # per sampler its reply: a batch of windows or an index read (<= capacity metas)
        + samplers * max(batch_size * sizes["window"], capacity * sizes["index_entry"])
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="~10 s of load instead of ~60 s")
    parser.add_argument("--seconds", type=float, default=None,
                        help="seconds of full load (default 60; quick: 10); baselines add 40 %%")
    parser.add_argument("--writers", type=int, default=32)
    parser.add_argument("--samplers", type=int, default=4)
    parser.add_argument("--capacity", type=int, default=256, help="episodes the table keeps")
    parser.add_argument("--steps", type=int, default=64, help="steps per episode")
    parser.add_argument("--frame-every", type=int, default=16, help="a frame every N steps")
    parser.add_argument("--frame-size", type=int, default=96, help="frames are N x N RGB noise")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per sample call")
    args = parser.parse_args()
    args.seconds = args.seconds or (10.0 if args.quick else 60.0)  # derived
    return args


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    load_s = args.seconds / ROUNDS
    slices = [(kind, load_s * (1 if kind == "load" else BASELINE_SHARE))
              for _ in range(ROUNDS) for kind in ("single_writer", "single_sampler", "load")]
    kinds = [kind for kind, _ in slices]
    fork = multiprocessing.get_context("fork")  # before any thread or client of this run

    with tempfile.TemporaryDirectory() as tmp, EmbeddedValkey(Path(tmp) / "replay") as server, \
            fork.Manager() as manager, \
            ProcessPoolExecutor(args.samplers, mp_context=fork) as processes:
        current, connected = manager.Value("i", IDLE), manager.Barrier(args.samplers + 1)
        sampling = [processes.submit(run_sampler, server.url, i, kinds, current, connected,
                                     args.batch_size) for i in range(args.samplers)]
        admin = ReplayClient(server.url, tables={TABLE: TableConfig(capacity=args.capacity)})
        writers = Writers([ReplayClient(server.url) for _ in range(args.writers)], kinds, args)
        sizes = episode_sizes(admin, args)
        for script in (scripts.ACQUIRE_SAMPLES, scripts.READ_WINDOWS):
            admin.redis.script_load(script)
        connected.wait(SYNC_TIMEOUT_S)
        baseline = admin.redis.info("memory")["used_memory"]
        logger.info("baseline used_memory %d B; sizes %s B", baseline, sizes)

        monitor = Monitor(admin)
        durations = []
        with ThreadPoolExecutor(args.writers + 1) as threads:
            monitoring = threads.submit(monitor.run)
            writing = [threads.submit(writers.run, w) for w in range(args.writers)]
            for k, (kind, seconds) in enumerate(slices):
                writers.current = current.value = k
                start = time.monotonic()
                time.sleep(seconds)
                writers.current = current.value = IDLE
                durations.append(time.monotonic() - start)
                logger.info("slice %d (%s): %.1f s, %d inserts", k, kind, durations[-1],
                            sum(per[k] for per in writers.per_slice))
            writers.current = current.value = STOP
            for future in writing:
                future.result()  # re-raises what a writer raised
            sampled = [future.result() for future in sampling]  # or a sampler
            monitor.stop.set()
            monitoring.result()

        stats = admin.table_stats(detailed=True)[TABLE]
        stored = set(admin.episode_ids(TABLE))
        episode_keys = sum(1 for _ in admin.redis.scan_iter(
            match=keys.EPISODE_KEY_PREFIX + "*", count=1000))
        used_memory_peak = admin.redis.info("memory")["used_memory_peak"]
        for client in (admin, *writers.clients):
            client.close()

    def rate(per_slice: list[list[int]], kind: str) -> float:
        picked = [k for k, name in enumerate(kinds) if name == kind]
        return sum(per[k] for per in per_slice for k in picked) / sum(durations[k] for k in picked)

    acknowledged = [eid for ids in writers.acknowledged for eid in ids]
    unique = set(acknowledged)
    windows_per_slice = [windows for windows, _ in sampled]
    sampled_ids = set().union(*(ids for _, ids in sampled))
    frames_per_episode = len(range(0, args.steps, args.frame_every))
    per_episode = 1 + len(keys.EPISODE_ARRAYS) - 1 + frames_per_episode  # meta, arrays but the (absent) label, frames
    inserts_per_s = rate(writers.per_slice, "load")
    single_writer = rate(writers.per_slice, "single_writer")
    windows_per_s = rate(windows_per_slice, "load")
    single_sampler = rate(windows_per_slice, "single_sampler")
    peak = max(monitor.peak_used_memory, used_memory_peak)
    bound = memory_bound(baseline, sizes, capacity=args.capacity, writers=args.writers,
                         samplers=args.samplers, batch_size=args.batch_size, evicted=stats["evicted"])
    print(json.dumps({
        "benchmark": "load",
        "quick": args.quick,
        "writers": args.writers,
        "samplers": args.samplers,
        "seconds": round(sum(d for d, kind in zip(durations, kinds) if kind == "load"), 1),
        "capacity": args.capacity,
        "episode_steps": args.steps,
        "frames_per_episode": frames_per_episode,
        "episode_bytes": sizes["episode"],
        "batch_size": args.batch_size,
        "acknowledged": len(acknowledged),
        "stored": len(stored),
        "evicted": stats["evicted"],
        "duplicates": (len(acknowledged) - len(unique)) + (stats["inserts"] - len(unique)),
        "missing": len(unique - stored) - stats["evicted"],
        "stored_not_acknowledged": len(stored - unique),
        "sampled_not_acknowledged": len(sampled_ids - unique),
        "orphan_keys": episode_keys - per_episode * (len(stored) + 1),  # + 1: the probe
        "retries": sum(writers.retries),
        "max_table_size": monitor.max_table_size,
        "inserts_per_s": round(inserts_per_s, 1),
        "insert_mb_per_s": round(inserts_per_s * sizes["episode"] / 1e6, 1),
        "windows_sampled_per_s": round(windows_per_s, 1),
        "single_writer_inserts_per_s": round(single_writer, 1),
        "ratio_vs_single_writer": round(inserts_per_s / single_writer, 3),
        "single_sampler_windows_per_s": round(single_sampler, 1),
        "samplers_ratio_vs_single_sampler": round(windows_per_s / single_sampler, 3),
        "peak_used_memory_bytes": peak,
        "memory_bound_bytes": bound,
        "baseline_used_memory_bytes": baseline,
        "within_memory_bound": peak <= bound,
    }))


if __name__ == "__main__":
    main()
