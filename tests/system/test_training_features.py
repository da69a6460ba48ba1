"""Training features: the flow-matching formulas, overfitting, embodiment independence,
freeze flags and gradient checkpointing."""

import numpy as np
import pytest
import torch

from fleetloop.system import DualSystemPolicy
from fleetloop.system.category_layers import CategorySpecificLinear


def test_flow_matching_formulas(model: DualSystemPolicy, batch, register_stats, monkeypatch):
    """Recompute eps, t, the interpolation, the buckets and the masked loss from the same seed."""
    register_stats(model)
    head = model.action_head
    seen = {}
    velocity = head._velocity

    def spy(vl_tokens, vl_mask, state_tokens, actions, buckets, ids):
        seen.update(noisy=actions, buckets=buckets)
        seen["pred"] = velocity(vl_tokens, vl_mask, state_tokens, actions, buckets, ids)
        return seen["pred"]

    monkeypatch.setattr(head, "_velocity", spy)
    ids = batch["embodiment_id"]
    action = model.normalize_action(batch["action"], batch["action_mask"], ids)
    tokens, _ = model.encode_vision_language(batch)
    torch.manual_seed(11)
    loss = model(batch)["loss"]

    torch.manual_seed(11)
    eps = torch.randn(action.shape, dtype=tokens.dtype)
    u = torch.distributions.Beta(torch.tensor(1.5), torch.tensor(1.0)).sample((action.shape[0],))
    t = (0.999 - u) / 0.999
    noisy = (1 - t[:, None, None]) * eps + t[:, None, None] * action
    torch.testing.assert_close(seen["noisy"], noisy)
    assert torch.equal(seen["buckets"], (t * 1000).long())
    mask = batch["action_mask"].float()
    expected = ((seen["pred"] - (action - eps)) ** 2 * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, expected)


def test_overfits_a_fixed_batch_20x(model: DualSystemPolicy, batch, register_stats):
    """Reseeding before each step fixes eps and t, so the target is a fixed regression."""
    register_stats(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(80):
        torch.manual_seed(1)
        loss = model(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < losses[0] / 20, (losses[0], losses[-3:])


def _slices(model: DualSystemPolicy, slot: int) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{p}": getattr(layer, p)[slot].detach().clone()
        for name, layer in model.named_modules()
        if isinstance(layer, CategorySpecificLinear)
        for p in ("W", "b")
    }


def test_training_one_embodiment_leaves_the_others_unchanged(model: DualSystemPolicy, batch, register_stats):
    """AdamW with weight_decay=0: other slots get zero gradients, hence zero updates.
    (Decoupled weight decay > 0 would shrink every slot, trained or not.)"""
    register_stats(model)
    before_other, before_own = _slices(model, 24), _slices(model, 31)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    for _ in range(3):
        loss = model(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after_other, after_own = _slices(model, 24), _slices(model, 31)
    assert all(torch.equal(before_other[k], after_other[k]) for k in before_other)
    assert all(not torch.equal(before_own[k], after_own[k]) for k in before_own)


@pytest.mark.parametrize(
    ("flag", "frozen_prefixes"),
    [
        pytest.param("tune_llm", ["backbone.model.language_model."], id="llm"),
        pytest.param("tune_visual", ["backbone.model.vision_model.", "backbone.model.mlp1."], id="visual"),
        pytest.param(
            "tune_projector",
            ["backbone.linear.", "action_head.state_encoder.", "action_head.action_encoder.",
             "action_head.action_decoder.", "action_head.position_embedding."],
            id="projector",
        ),
        pytest.param("tune_diffusion_model", ["action_head.model."], id="dit"),
    ],
)
def test_set_trainable_freezes_exactly_its_group(model: DualSystemPolicy, batch, flag, frozen_prefixes):
    counts = model.set_trainable(**{flag: False})
    assert counts[flag] == 0 and all(n > 0 for f, n in counts.items() if f != flag)
    for name, param in model.named_parameters():
        assert param.requires_grad != name.startswith(tuple(frozen_prefixes)), name
    model(batch)["loss"].backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith(tuple(frozen_prefixes)))
    model.set_trainable()
    assert all(p.requires_grad for p in model.parameters())


def test_every_parameter_belongs_to_one_flag(model: DualSystemPolicy):
    owned = [id(p) for modules in model.trainable_groups().values() for m in modules for p in m.parameters()]
    assert sorted(owned) == sorted(id(p) for p in model.parameters())


def _counted(forward, calls: list):
    """`forward`, appending to `calls` on each run (hooks do not fire when checkpointing recomputes)."""

    def run(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    return run


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(model: DualSystemPolicy, batch, register_stats):
    register_stats(model)
    model.train()

    def loss_and_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        torch.manual_seed(3)
        loss = model(batch)["loss"]
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    calls = []
    block = model.action_head.model.transformer_blocks[0]
    block.forward = _counted(block.forward, calls)
    eagle = model.backbone.model
    hf_layers = [*eagle.vision_model.vision_model.encoder.layers, *eagle.language_model.model.layers]
    plain_loss, plain = loss_and_grads()
    assert len(calls) == 1 and not any(layer.gradient_checkpointing for layer in hf_layers)
    model.set_gradient_checkpointing(True)
    assert all(layer.gradient_checkpointing for layer in hf_layers)
    ckpt_loss, ckpt = loss_and_grads()
    assert len(calls) == 3, "the DiT block runs again in the backward pass"
    model.set_gradient_checkpointing(False)
    assert not any(layer.gradient_checkpointing for layer in hf_layers)
    assert torch.equal(plain_loss, ckpt_loss)
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)
