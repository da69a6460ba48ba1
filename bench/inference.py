"""Inference latency of the tiny preset on CPU, and parameter counts of every preset.

Measures the median latency of a full `Policy.act()` (System 2 + K System 1 Euler steps)
and of an `act()` that reuses the cached System 2 tokens, their ratio, and the act rate and
actions per second when System 2 runs on every `--system2-every`-th call. Parameter counts
are taken on the meta device (no memory). Logs go to stderr; the last stdout line is JSON.

    python bench/inference.py [--quick]
"""

import argparse
import json
import logging
import statistics
import time

import numpy as np
import torch

from fleetloop.system import DualSystemPolicy, Policy, embodiment_id, model_preset, preset_names

log = logging.getLogger("bench.inference")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (well under a minute)")
    parser.add_argument("--repeats", type=int, default=None, help="timed act() calls per variant (200; quick: 30)")
    parser.add_argument("--steps", type=int, default=None, help="Euler steps K (default: the preset's)")
    parser.add_argument("--system2-every", type=int, default=10, help="System 2 runs on every N-th act() call")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    args.repeats = args.repeats or (30 if args.quick else 200)  # derived
    return args


def parameter_counts() -> dict[str, dict[str, int]]:
    """Preset name -> {"total": parameters, "dit": parameters of action_head.model}, on the meta device."""
    counts = {}
    for name in preset_names():
        with torch.device("meta"):
            params = dict(DualSystemPolicy(model_preset(name)).named_parameters())
        counts[name] = {
            "total": sum(p.numel() for p in params.values()),
            "dit": sum(p.numel() for n, p in params.items() if n.startswith("action_head.model.")),
        }
    return counts


def median_ms(policy: Policy, observation: dict, refresh: bool, repeats: int) -> float:
    """Median wall time in ms of policy.act(observation, refresh_vl=refresh)."""
    policy.act(observation, refresh_vl=True)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        policy.act(observation, refresh_vl=refresh)
        timings.append((time.perf_counter() - start) * 1000)
    return statistics.median(timings)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = model_preset("tiny")
    model = DualSystemPolicy(config)
    sim_arm = embodiment_id("sim_arm")
    model.set_normalization(sim_arm, np.full(4, -3.0), np.full(4, 3.0), np.full(2, -2.0), np.full(2, 2.0))
    policy = Policy(model, seed=0, num_inference_steps=args.steps)
    rng = np.random.default_rng(0)
    observation = {
        "image": rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8),
        "state": rng.uniform(-1, 1, size=4).astype(np.float32),
        "instruction": "reach the red ball",
        "embodiment_id": sim_arm,
    }
    steps = args.steps or config.action_head.num_inference_timesteps
    log.info("tiny preset, K=%d, %d repeats, %d thread(s)", steps, args.repeats, args.threads)
    full = median_ms(policy, observation, True, args.repeats)
    cached = median_ms(policy, observation, False, args.repeats)
    every = args.system2_every
    mean_at_rates = (full + (every - 1) * cached) / every
    act_hz = 1000 / mean_at_rates
    horizon = config.action_head.action_horizon
    log.info("full %.2f ms, cached %.2f ms, %.1f act()/s with System 2 every %d calls", full, cached, act_hz, every)
    params = parameter_counts()
    figures = {
        "preset": "tiny",
        "device": "cpu",
        "threads": args.threads,
        "num_inference_steps": steps,
        "act_ms_full": round(full, 3),
        "act_ms_cached": round(cached, 3),
        "ratio_full_vs_cached": round(full / cached, 3),
        "system2_every": every,
        "act_ms_mean_at_rates": round(mean_at_rates, 3),
        "system1_hz": round(act_hz, 1),
        "system2_hz": round(act_hz / every, 1),
        "actions_per_s": round(act_hz * horizon, 1),
        "params": params,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
