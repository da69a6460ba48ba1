"""Replay throughput: inserts/s and training windows/s against raw redis-py on one server.

Starts an embedded Valkey (AOF on, appendfsync everysec, as a run uses it) in a temporary
directory, writes GR-1-like episodes (one 256x256 RGB frame per step, 44-dim state and
action), then samples windows (frame t, state t, 16 actions) with 1 and 4 sampler threads
in this process (each with its own client and WindowSampler), with frames decoded in the
sampler and left encoded for the consumer. The baseline is raw redis-py: pipelined GETs of
keys holding the same bytes per window (the stored PNG, a state row, an action chunk), as
many windows' worth as the replay holds, with the same batch size and threads; and
pipelined SETs of those bytes for inserts. Cases run interleaved in ROUNDS slices, so a
background load on the machine hits the replay and the baseline alike.

Frames are a synthetic noise-free render (tiled wall, wood-grain table, shaded balls that
move per step): a compressible image whose PNG (~47 kB) is close to that of a frame of the
shared GR-1 dataset stored the same way (~55 kB at compress_level 1). Logs go to stderr;
the last stdout line is one JSON object.

    python bench/replay.py [--quick]
"""

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import redis

from fleetloop.replay import EmbeddedValkey, Episode, ReplayClient, WindowSampler

logger = logging.getLogger("bench.replay")

FRAME_SIZE = 256
STATE_DIM = ACTION_DIM = 44
HORIZON = 16
ROUNDS = 4
"""Each case runs in this many slices, interleaved with the other cases."""


def scene(step: int, size: int = FRAME_SIZE) -> np.ndarray:
    """A synthetic RGB render at ``step``: a tiled wall, a wood-grain table and shaded
    moving balls; its PNG is about the size of a GR-1 frame's."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    horizon = 0.3
    tiles = 0.04 * ((np.floor(x * 12) + np.floor(y * 12)) % 2)
    wall = np.stack([0.85 + tiles, 0.85 + tiles, 0.88 + tiles], axis=-1)
    grain = 0.08 * np.sin(90 * x + 4 * np.sin(9 * y) + 2 * np.sin(23 * x * y))
    table = np.stack([0.72 + grain, 0.5 + 0.8 * grain, 0.32 + 0.5 * grain], axis=-1)
    image = np.where((y < horizon)[..., None], wall, table * (1.1 - 0.3 * y[..., None]))
    for k, color in enumerate(([0.9, 0.2, 0.2], [0.2, 0.8, 0.3], [0.2, 0.3, 0.9])):
        cx = 0.25 + 0.25 * k + 0.05 * np.sin(0.07 * step + k)
        cy = 0.65 + 0.04 * np.cos(0.05 * step + 2 * k)
        d2 = ((x - cx) ** 2 + (y - cy) ** 2) / 0.07**2
        shade = np.clip(1.0 - d2, 0.0, 1.0) ** 0.5
        mask = (d2 < 1.0)[..., None]
        lit = np.asarray(color) * (0.4 + 0.6 * shade[..., None])
        image = np.where(mask, lit, image)
    return (np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def make_episode(frames: dict[int, np.ndarray], rng: np.random.Generator) -> Episode:
    length = len(frames)
    return Episode(
        states=np.cumsum(rng.normal(0, 0.01, (length, STATE_DIM)), 0).astype(np.float32),
        actions=np.cumsum(rng.normal(0, 0.01, (length, ACTION_DIM)), 0).astype(np.float32),
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


def run_threads(
    n_threads: int, seconds: float, make_worker: Callable[[int], Callable[[], int]]
) -> dict:
    """Run ``n_threads`` loops of a worker call (returning windows done) for ``seconds``.

    Returns:
        windows, per-call latencies (s) and wall time.
    """
    workers = [make_worker(i) for i in range(n_threads)]
    for work in workers:  # warm up: connections, sampler index
        work()
    latencies: list[float] = []
    windows = [0] * n_threads
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + seconds

    def loop(i: int) -> None:
        mine = []
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            windows[i] += workers[i]()
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"windows": sum(windows), "latencies": latencies, "wall": time.perf_counter() - start}


def settle(conn: redis.Redis) -> None:
    """Wait until the server has no AOF rewrite or snapshot in progress or scheduled (the
    inserts above trigger an AOF rewrite, whose fork would skew the first measurement)."""
    busy = ("aof_rewrite_in_progress", "aof_rewrite_scheduled", "rdb_bgsave_in_progress")
    start = time.perf_counter()
    while any(conn.info("persistence").get(name) for name in busy):
        time.sleep(0.1)
    logger.info("server settled (AOF rewrite) in %.1f s", time.perf_counter() - start)


def summarise(result: dict, bytes_per_window: float) -> dict:
    lat = sorted(result["latencies"])
    per_s = result["windows"] / result["wall"]
    return {
        "windows_per_s": round(per_s, 1),
        "mb_per_s": round(per_s * bytes_per_window / 1e6, 1),
        "p50_ms": round(1e3 * statistics.median(lat), 2),
        "p99_ms": round(1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run, under a minute")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    n_episodes, length, seconds = (6, 60, 2.5) if args.quick else (20, 200, 8.0)
    batch = args.batch_size
    rng = np.random.default_rng(0)
    frames = {t: scene(t) for t in range(length)}

    with tempfile.TemporaryDirectory() as tmp, EmbeddedValkey(Path(tmp) / "replay") as server:
        client = ReplayClient(server.url)
        episodes = [make_episode(frames, rng) for _ in range(n_episodes)]
        start = time.perf_counter()
        for ep in episodes:
            client.write_episode("pretrain", ep)
        insert_wall = time.perf_counter() - start
        stored = client.table_stats()["pretrain"]
        logger.info("inserted %d episodes (%d steps, %.1f MB) in %.2f s",
                    n_episodes, stored["steps"], stored["bytes"] / 1e6, insert_wall)

        probe = WindowSampler(client, {"pretrain": 1.0}, HORIZON, seed=0).sample_batch(
            256, decode_images=False)
        png_bytes = float(np.mean([len(b) for b in probe["image_png"]]))
        window_bytes = png_bytes + 4 * STATE_DIM + 4 * HORIZON * ACTION_DIM
        logger.info("mean frame PNG %.1f kB (raw %d kB); %.1f kB per window",
                    png_bytes / 1e3, 3 * FRAME_SIZE**2 // 1000, window_bytes / 1e3)

        def sampler_worker(decode: bool) -> Callable[[int], Callable[[], int]]:
            def make(i: int) -> Callable[[], int]:
                sampler = WindowSampler(ReplayClient(server.url), {"pretrain": 1.0}, HORIZON,
                                        seed=i, refresh_s=3600)
                return lambda: len(sampler.sample_batch(batch, decode_images=decode)["step"])
            return make

        raw = redis.Redis.from_url(server.url)
        n_keys = stored["steps"]  # as many windows' worth of keys as the replay holds
        blobs = [
            (probe["image_png"][i % 256], rng.bytes(4 * STATE_DIM),
             rng.bytes(4 * HORIZON * ACTION_DIM))
            for i in range(n_keys)
        ]
        start = time.perf_counter()
        pipe = raw.pipeline(transaction=False)
        for i, parts in enumerate(blobs):
            for j, blob in enumerate(parts):
                pipe.set(f"raw:{i}:{j}", blob)
        pipe.execute()
        raw_set_mb_s = n_keys * window_bytes / (time.perf_counter() - start) / 1e6

        def raw_worker(i: int) -> Callable[[], int]:
            conn, key_rng = redis.Redis.from_url(server.url), np.random.default_rng(100 + i)

            def get_batch() -> int:
                p = conn.pipeline(transaction=False)
                for k in key_rng.integers(n_keys, size=batch):
                    for j in range(3):
                        p.get(f"raw:{k}:{j}")
                return len(p.execute()) // 3
            return get_batch

        settle(raw)
        cases = {
            f"{name}_{threads}": (threads, make)
            for threads in (1, 4)
            for name, make in (("replay_encoded", sampler_worker(False)),
                               ("replay_decoded", sampler_worker(True)),
                               ("raw_redis", raw_worker))
        }
        runs: dict[str, list[dict]] = {case: [] for case in cases}
        for _ in range(ROUNDS):  # interleaved, so replay and raw share any background load
            for case, (threads, make) in cases.items():
                runs[case].append(run_threads(threads, seconds / ROUNDS, make))
        results = {}
        for case, parts in runs.items():
            results[case] = summarise({
                "windows": sum(p["windows"] for p in parts),
                "latencies": [t for p in parts for t in p["latencies"]],
                "wall": sum(p["wall"] for p in parts),
            }, window_bytes)
            logger.info("%-18s %s", case, results[case])
        client.close()
        raw.close()

    head, base = results["replay_encoded_1"], results["raw_redis_1"]
    print(json.dumps({
        "quick": args.quick,
        "batch_size": batch,
        "frame_png_kb": round(png_bytes / 1e3, 1),
        "inserts_per_s": round(n_episodes / insert_wall, 2),
        "insert_steps_per_s": round(stored["steps"] / insert_wall, 1),
        "insert_mb_per_s": round(stored["bytes"] / insert_wall / 1e6, 1),
        "raw_set_mb_per_s": round(raw_set_mb_s, 1),
        "windows_per_s": head["windows_per_s"],
        "windows_mb_per_s": head["mb_per_s"],
        "windows_decoded_per_s": results["replay_decoded_1"]["windows_per_s"],
        "windows_per_s_4_samplers": results["replay_encoded_4"]["windows_per_s"],
        "windows_decoded_per_s_4_samplers": results["replay_decoded_4"]["windows_per_s"],
        "raw_windows_equiv_per_s": base["windows_per_s"],
        "raw_windows_equiv_per_s_4_threads": results["raw_redis_4"]["windows_per_s"],
        "ratio_vs_raw_redis": round(head["windows_per_s"] / base["windows_per_s"], 3),
        "ratio_vs_raw_redis_4": round(results["replay_encoded_4"]["windows_per_s"]
                                      / results["raw_redis_4"]["windows_per_s"], 3),
        "p50_sample_ms": head["p50_ms"],
        "p99_sample_ms": head["p99_ms"],
        "results": results,
    }))


if __name__ == "__main__":
    main()
