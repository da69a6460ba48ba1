"""DeepSpeed engine set-up (real engine, gloo on CPU) and the background prefetcher."""

import os
import signal
import threading
import time

import pytest
import torch

from fleetloop.learner.data import Prefetcher
from fleetloop.learner.engine import build_engine, build_model, deepspeed_config, gathered, param_groups, warmup_cosine
from fleetloop.replay import EmptyReplayError, RateLimitedError, ReplayClient, WindowSampler


class Regressor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, batch):
        pred = self.linear(batch["x"]).squeeze(-1) * self.scale
        return {"loss": torch.nn.functional.mse_loss(pred, batch["y"])}


def test_no_weight_decay_on_one_dimensional_parameters():
    model = Regressor()
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([1, 4])]
    assert len(no_decay["params"]) == 2  # the bias and the scale


def test_per_embodiment_biases_are_not_decayed():
    from fleetloop.system import DualSystemPolicy, model_preset

    model = DualSystemPolicy(model_preset("tiny"))
    decay, no_decay = param_groups(model, weight_decay=0.1)
    no_decay_ids = {id(p) for p in no_decay["params"]}
    names = {name for name, p in model.named_parameters() if id(p) in no_decay_ids}
    assert "action_head.state_encoder.layer1.b" in names
    assert "action_head.state_encoder.layer1.W" not in names
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_frozen_parameters_are_left_out():
    model = Regressor()
    model.linear.weight.requires_grad_(False)
    decay, _ = param_groups(model, weight_decay=0.1)
    assert decay["params"] == []


def test_deepspeed_config_follows_the_learner_section():
    config = deepspeed_config(batch_size=8, grad_clip=0.5, zero_stage=2)
    assert config["train_micro_batch_size_per_gpu"] == 8
    assert config["gradient_clipping"] == 0.5
    assert config["zero_optimization"] == {"stage": 2}
    assert config["bf16"]["enabled"] is (torch.cuda.is_available() and torch.cuda.is_bf16_supported())


@pytest.mark.parametrize("zero_stage", [1, 2])
def test_engine_trains(zero_stage):
    torch.manual_seed(0)
    engine = build_engine(Regressor(), deepspeed_config(batch_size=16, grad_clip=1.0, zero_stage=zero_stage), lr=0.1,
                          weight_decay=0.0)
    x = torch.randn(16, 4)
    batch = {"x": x, "y": x @ torch.tensor([1.0, -2.0, 0.5, 3.0])}
    losses = []
    for _ in range(100):
        loss = engine(batch)["loss"]
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]
    assert engine.global_steps == 100


def test_zero_3_builds_the_model_partitioned_with_every_weight_initialised():
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    from fleetloop.system import DualSystemPolicy, model_preset

    config = deepspeed_config(batch_size=2, grad_clip=1.0, zero_stage=3)
    model = build_model(lambda: DualSystemPolicy(model_preset("tiny")), config)
    assert not is_deepspeed_zero3_enabled(), "Hugging Face is told about ZeRO-3 only while the model is built"
    params = dict(model.named_parameters())
    assert all(hasattr(p, "ds_id") and p.numel() == 0 for p in params.values()), "every parameter partitioned"
    full = DualSystemPolicy(model_preset("tiny"))
    decay, no_decay = param_groups(model, 0.1), param_groups(full, 0.1)
    assert [len(g["params"]) for g in decay] == [len(g["params"]) for g in no_decay], "groups by the real shapes"
    with gathered(model, 3):
        for name, reference in full.named_parameters():
            whole = params[name]
            assert whole.shape == reference.shape, name
            if name.endswith("weight") and whole.ndim == 2 and reference.std() > 0:  # SigLIP, Llama and DiT layers
                assert 0.5 < float(whole.std() / reference.std()) < 2.0, f"{name} initialised like a full build"


def test_each_python_environment_builds_its_ops_in_its_own_cache(monkeypatch, tmp_path):
    """Two checkouts on one machine must not rebuild DeepSpeed's JIT op in turn in one shared cache."""
    import sys

    from fleetloop.learner.engine import init_distributed

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    init_distributed()
    assert os.environ["TORCH_EXTENSIONS_DIR"] == os.path.join(sys.prefix, "torch_extensions")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    init_distributed()
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(tmp_path), "an operator's own setting is kept"


def test_warmup_then_cosine_to_the_floor():
    factor = warmup_cosine(warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert factor(0) == pytest.approx(0.1)
    assert factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.55)
    assert factor(110) == pytest.approx(0.1) and factor(500) == pytest.approx(0.1)
    assert all(factor(s) >= factor(s + 1) for s in range(10, 120))
    assert warmup_cosine(0, 10, 0.0)(0) == pytest.approx(1.0)


def test_warm_restarts_repeat_the_schedule():
    once = warmup_cosine(warmup_steps=5, total_steps=40, min_ratio=0.1)
    restarting = warmup_cosine(warmup_steps=5, total_steps=40, min_ratio=0.1, restart_every=40)
    assert [restarting(s) for s in range(120)] == [once(s % 40) for s in range(120)]
    assert restarting(40) == pytest.approx(0.2) and restarting(39) < 0.11


def test_accumulation_steps_the_optimizer_and_schedule_once_per_boundary():
    torch.manual_seed(0)
    engine = build_engine(Regressor(), deepspeed_config(batch_size=4, grad_clip=1.0, zero_stage=1, grad_accum_steps=2),
                          lr=0.01, weight_decay=0.0, warmup_steps=4, total_steps=20, min_lr_ratio=0.0)
    x = torch.randn(4, 4)
    batch = {"x": x, "y": x.sum(-1)}
    for _ in range(6):
        engine.backward(engine(batch)["loss"])
        engine.step()
    assert engine.global_steps == 3
    assert engine.get_lr()[0] == pytest.approx(0.01 * warmup_cosine(4, 20, 0.0)(3))


def test_prefetcher_serves_batches_in_order():
    counter = iter(range(1000))

    def sample(n):
        return [next(counter) for _ in range(n)]

    prefetch = Prefetcher(lambda: sample(2), depth=2)
    try:
        assert [prefetch.next(timeout=5) for _ in range(3)] == [[0, 1], [2, 3], [4, 5]]
    finally:
        prefetch.close()


def test_prefetcher_waits_for_an_empty_replay_to_fill():
    empty_calls = 3
    calls = []

    def sample(n):
        calls.append(n)
        if len(calls) <= empty_calls:
            raise EmptyReplayError("nothing yet")
        return [1] * n

    prefetch = Prefetcher(lambda: sample(4), depth=1, retry_s=0.01)
    try:
        windows = prefetch.next(timeout=5)
    finally:
        prefetch.close()
    assert windows == [1, 1, 1, 1]
    assert len(calls) > empty_calls


def test_a_learner_paced_by_the_rate_limiter_waits_and_counts_the_wait():
    """RateLimitedError is pacing, not an outage: the consumer's timeout does not count it."""
    limited_calls = []

    def sample(n):
        if len(limited_calls) < 4:
            limited_calls.append(n)
            time.sleep(0.3)  # the sampler's own wait on the limiter before it gives up
            raise RateLimitedError("corrections: a sample of 2 windows waits for the fleet's inserts")
        return [7] * n

    prefetch = Prefetcher(lambda: sample(2), depth=1)
    try:
        assert prefetch.next(timeout=0.5) == [7, 7]  # 1.2 s of pacing against a 0.5 s timeout
    finally:
        prefetch.close()
    assert len(limited_calls) == 4
    assert 1.1 <= prefetch.limited_s < 3.0


def test_prefetcher_reraises_sampling_errors_in_the_consumer():
    def sample(n):
        raise ConnectionError("replay went away")

    prefetch = Prefetcher(lambda: sample(1), depth=1)
    try:
        with pytest.raises(ConnectionError, match="replay went away"):
            prefetch.next(timeout=5)
    finally:
        prefetch.close()


def test_prefetcher_times_out_with_a_clear_message():
    release = threading.Event()

    def sample(n):
        release.wait(5)
        return [0] * n

    prefetch = Prefetcher(lambda: sample(1), depth=1)
    try:
        with pytest.raises(TimeoutError, match="no training batch within"):
            prefetch.next(timeout=0.2)
    finally:
        release.set()
        prefetch.close()


def test_prefetcher_rides_out_a_paused_replay(valkey, make_episode):
    """A replay paused for longer than the client's timeouts (or restarting) delays batches; it
    does not end training."""
    with ReplayClient(valkey.url, socket_timeout=0.3, connect_timeout=0.3) as client:
        client.write_episode("pretrain", make_episode(length=8))
        sampler = WindowSampler(client, {"pretrain": 1.0}, horizon=4, seed=0, refresh_s=0.0)
        prefetch = Prefetcher(lambda: sampler.sample(2), depth=1, retry_s=0.05)
        try:
            prefetch.next(timeout=10)
            os.kill(valkey.pid, signal.SIGSTOP)
            threading.Timer(1.5, os.kill, (valkey.pid, signal.SIGCONT)).start()
            prefetch.next(timeout=10)  # the one queued before the pause
            windows = prefetch.next(timeout=10)
        finally:
            os.kill(valkey.pid, signal.SIGCONT)
            prefetch.close()
    assert len(windows) == 2 and all(w["action"].shape == (4, 2) for w in windows)
