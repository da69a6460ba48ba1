"""Checkpoints: bit-exact round trip and refusal of mismatched files."""

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fleetloop.system import CheckpointMismatchError, DualSystemPolicy, Statistics, load_policy, save_policy
from fleetloop.system.checkpoint import FORMAT_VERSION


def test_round_trip_is_bit_exact(model: DualSystemPolicy, batch, register_stats, tmp_path):
    register_stats(model)
    rng = np.random.default_rng(0)
    model.set_statistics(
        24, Statistics.of(rng.normal(size=(50, 44)), "mean_std"), Statistics.of(rng.normal(size=(50, 26)), "q99")
    )
    with torch.no_grad():
        model.action_head.position_embedding.weight.add_(0.5)
    path = tmp_path / "policy.safetensors"
    save_policy(model, path)
    loaded = load_policy(path)
    assert loaded.config == model.config
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for name, tensor in original.items():
        assert torch.equal(tensor, restored[name]) and tensor.dtype == restored[name].dtype, name
    model.eval()
    loaded.eval()
    expected = model.get_action(batch, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded.get_action(batch, generator=torch.Generator().manual_seed(0)), expected)


def _rewrite(path, edit) -> None:
    """Apply `edit` to the tensors of checkpoint `path`, keeping its metadata."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata=metadata)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        pytest.param(
            lambda t: t.pop("backbone.linear.bias"),
            r"missing: backbone.linear.bias \(expected shape \(128,\)\)",
            id="missing",
        ),
        pytest.param(
            lambda t: t.update({"action_head.decode_layer.weight": torch.zeros(2)}),
            r"unexpected: action_head.decode_layer.weight \(2,\)",
            id="unexpected",
        ),
        pytest.param(
            lambda t: t.update({"state_min": torch.zeros(32, 63)}),
            r"mis-shaped: state_min: expected \(32, 64\), got \(32, 63\)",
            id="mis-shaped",
        ),
    ],
)
def test_mismatched_tensors_are_refused(model: DualSystemPolicy, tmp_path, edit, message):
    path = tmp_path / "policy.safetensors"
    save_policy(model, path)
    _rewrite(path, edit)
    with pytest.raises(CheckpointMismatchError, match=message):
        load_policy(path)


def test_foreign_file_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, str(path))
    with pytest.raises(ValueError, match=f"not a {FORMAT_VERSION} checkpoint"):
        load_policy(path)


def test_tensors_digest_tells_weights_apart_bit_for_bit():
    from fleetloop.system.checkpoint import tensors_digest

    torch.manual_seed(0)
    tensors = {"b": torch.randn(3, 4), "a": torch.randn(5).to(torch.bfloat16), "empty": torch.zeros(0)}
    digest = tensors_digest(tensors)
    assert tensors_digest(dict(reversed(list(tensors.items())))) == digest  # order-free
    widened = {k: v.float() for k, v in tensors.items()}
    assert tensors_digest({k: widened[k].to(v.dtype) for k, v in tensors.items()}) == digest  # lossless round trip
    flipped = tensors["b"].clone()
    flipped.view(torch.int32)[1, 2] ^= 1  # one bit of one float
    assert tensors_digest({**tensors, "b": flipped}) != digest
    assert tensors_digest({**tensors, "b": tensors["b"].reshape(4, 3)}) != digest  # same bytes, other shape
    assert tensors_digest({**tensors, "c": torch.zeros(1)}) != digest
