"""GR00T checkpoint conversion: name map against the reference, and the real path end to end
on a small GR00T-named checkpoint (sharded, bfloat16, with the release's unused decode_layer)."""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fleetloop.system import (
    DualSystemPolicy,
    GR00TConversionError,
    convert_gr00t,
    gr00t_name_map,
    load_policy,
    model_preset,
)
from fleetloop.limits import InputError
from fleetloop.system import gr00t_conversion

def test_every_reference_tensor_maps_to_a_parameter_of_its_shape(gr00t_reference):
    reference = gr00t_reference
    config = model_preset("n1-2b")
    names = gr00t_name_map(config)
    with torch.device("meta"):
        params = dict(DualSystemPolicy(config).named_parameters())
    assert len(names) == len(reference) == 802
    for gr00t_name, (shape, _) in reference.items():
        assert list(params[names[gr00t_name]].shape) == shape, gr00t_name


def _write_gr00t_checkpoint(model: DualSystemPolicy, directory: Path, edit=None) -> dict[str, torch.Tensor]:
    """GR00T-named bfloat16 tensors of `model` in two shards with an index, plus decode_layer."""
    inverse = {ours: gr00t for gr00t, ours in gr00t_name_map(model.config).items()}
    params = dict(model.named_parameters())
    tensors = {inverse[name]: p.detach().to(torch.bfloat16) for name, p in params.items()}
    tensors["action_head.decode_layer.weight"] = torch.zeros(32, 128, dtype=torch.bfloat16)
    tensors["action_head.decode_layer.bias"] = torch.zeros(32, dtype=torch.bfloat16)
    if edit:
        edit(tensors)
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    directory.mkdir(parents=True, exist_ok=True)
    for file, members in shards.items():
        save_file({n: tensors[n].contiguous() for n in members}, str(directory / file))
    weight_map = {n: file for file, members in shards.items() for n in members}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return tensors


def test_converts_a_sharded_bfloat16_checkpoint(model: DualSystemPolicy, batch, tmp_path):
    tensors = _write_gr00t_checkpoint(model, tmp_path / "gr00t")
    report = convert_gr00t(tmp_path / "gr00t", tmp_path / "out" / "policy.safetensors", preset="tiny")
    assert report.mapped == len(list(model.parameters()))
    assert report.unused == ["action_head.decode_layer.bias", "action_head.decode_layer.weight"]
    assert report.source_dtypes == {"BF16": len(tensors)} and report.output_dtype == "float32"
    assert "decode_layer" in report.summary()
    converted = load_policy(report.out_path)
    for name, param in converted.named_parameters():
        assert param.dtype == torch.float32
        assert torch.equal(param, dict(model.named_parameters())[name].detach().to(torch.bfloat16).float()), name
    assert (converted.state_dim == 0).all(), "statistics start as pass-through"
    converted.eval()
    assert torch.isfinite(converted.get_action(batch, generator=torch.Generator().manual_seed(0))).all()


def test_single_file_checkpoint(model: DualSystemPolicy, tmp_path):
    source = tmp_path / "gr00t"
    source.mkdir()
    save_file({n: p.detach().contiguous() for n, p in model.named_parameters()}, str(source / "model.safetensors"))
    report = convert_gr00t(source, tmp_path / "policy.safetensors", preset="tiny")
    assert report.unused == [] and report.source_dtypes == {"F32": report.mapped}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        pytest.param(
            lambda t: t.pop("backbone.linear.bias"), r"missing: backbone.linear.bias \(expected shape \(128,\)\)",
            id="missing",
        ),
        pytest.param(
            lambda t: t.update({"action_head.action_encoder.W1.W": torch.zeros(32, 128, 32, dtype=torch.bfloat16)}),
            r"mis-shaped: action_head.action_encoder.W1.W: expected \(32, 32, 128\), got \(32, 128, 32\)",
            id="transposed",
        ),
    ],
)
def test_bad_checkpoints_name_the_tensor(model: DualSystemPolicy, tmp_path, edit, message):
    _write_gr00t_checkpoint(model, tmp_path / "gr00t", edit)
    with pytest.raises(GR00TConversionError, match=message):
        convert_gr00t(tmp_path / "gr00t", tmp_path / "policy.safetensors", preset="tiny")
    assert not (tmp_path / "policy.safetensors").exists()


def test_missing_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        convert_gr00t(tmp_path / "absent", tmp_path / "out.safetensors", preset="tiny")
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        convert_gr00t(tmp_path, tmp_path / "out.safetensors", preset="tiny")


def test_index_over_the_limit_is_refused(model: DualSystemPolicy, tmp_path, monkeypatch):
    _write_gr00t_checkpoint(model, tmp_path / "gr00t")
    index = tmp_path / "gr00t" / gr00t_conversion.INDEX_FILE
    size = index.stat().st_size
    monkeypatch.setattr(gr00t_conversion, "MAX_INDEX_BYTES", size - 1)
    words = f"{index}: {size} bytes exceed the limit of {size - 1} bytes for this file"
    with pytest.raises(InputError, match=re.escape(words)):
        convert_gr00t(tmp_path / "gr00t", tmp_path / "policy.safetensors", preset="tiny")
    assert not (tmp_path / "policy.safetensors").exists()
    monkeypatch.setattr(gr00t_conversion, "MAX_INDEX_BYTES", size)
    assert convert_gr00t(tmp_path / "gr00t", tmp_path / "policy.safetensors", preset="tiny").mapped > 0


@pytest.mark.parametrize("text, says", [
    ("{", "not valid JSON"),
    ("[]", "'weight_map' must map tensor names to shard file names"),
    ('{"weight_map": {"a": 3}}', "'weight_map' must map tensor names to shard file names"),
    ('{"weight_map": {"a": "../outside.safetensors"}}', "shard names must be file names in its directory"),
    ('{"weight_map": {"a": "/etc/passwd"}}', "shard names must be file names in its directory"),
], ids=["bad_json", "not_an_object", "not_a_name", "parent_dir", "absolute"])
def test_malformed_index_is_refused(model: DualSystemPolicy, tmp_path, text, says):
    _write_gr00t_checkpoint(model, tmp_path / "gr00t")
    (tmp_path / "gr00t" / gr00t_conversion.INDEX_FILE).write_text(text)
    with pytest.raises(InputError, match=re.escape(says)):
        convert_gr00t(tmp_path / "gr00t", tmp_path / "policy.safetensors", preset="tiny")
    assert not (tmp_path / "policy.safetensors").exists()
