"""ModelConfig presets and validation."""

import subprocess
import sys

import pydantic
import pytest

from fleetloop.system import ByteTokenizer, ModelConfig, model_preset, preset_names


def test_tiny_preset_sizes(config: ModelConfig):
    assert config.vision.image_size == 64 and config.vision.patch_size == 8
    assert config.vision.grid_side**2 == 64
    assert config.vision.num_image_tokens == 16
    assert config.vision.projector_in_dim == 4 * config.vision.hidden_size
    assert config.llm.vocab_size == ByteTokenizer.vocab_size
    head = config.action_head
    assert head.input_embedding_dim == 128 and head.dit.num_heads == 4 and head.dit.num_layers == 4
    assert (head.max_state_dim, head.max_action_dim, head.action_horizon) == (64, 32, 16)
    assert (head.max_num_embodiments, head.max_seq_len, head.num_timestep_buckets) == (32, 64, 1000)
    assert (head.noise_beta_alpha, head.noise_beta_beta, head.noise_s) == (1.5, 1.0, 0.999)
    assert head.num_inference_timesteps == 4 and config.llm.max_text_tokens == 48


def test_n1_2b_preset_sizes():
    config = model_preset("n1-2b")
    vision, llm, head = config.vision, config.llm, config.action_head
    assert (vision.image_size, vision.patch_size, vision.hidden_size, vision.num_layers) == (224, 14, 1152, 27)
    assert vision.intermediate_size == 4304 and vision.num_image_tokens == 64 and vision.projector_in_dim == 4608
    assert (llm.hidden_size, llm.vocab_size, llm.intermediate_size, llm.num_heads, llm.select_layer) == (
        2048, 49164, 8192, 32, 12)
    assert llm.tokenizer == "pretrained" and llm.rope_theta == 130000.0
    assert (head.dit.num_layers, head.dit.num_heads, head.dit.head_dim, head.dit.output_dim) == (16, 32, 48, 1024)
    assert head.input_embedding_dim == 1536 and head.dit.ff_mult * head.input_embedding_dim == 6144
    assert (head.hidden_size, head.max_seq_len, head.action_horizon) == (1024, 1024, 16)
    assert (head.max_state_dim, head.max_action_dim, head.max_num_embodiments) == (64, 32, 32)
    assert preset_names() == ["n1-2b", "tiny"]


def test_unknown_preset_lists_known():
    with pytest.raises(ValueError, match="'huge'.*tiny"):
        model_preset("huge")


def test_json_round_trip(config: ModelConfig):
    assert ModelConfig.model_validate_json(config.model_dump_json()) == config


def test_frozen_and_no_extra_fields(config: ModelConfig):
    with pytest.raises(pydantic.ValidationError):
        config.vision.image_size = 32
    data = config.model_dump()
    data["vision"]["colour"] = "red"
    with pytest.raises(ValueError, match="colour"):
        ModelConfig.model_validate(data)


@pytest.mark.parametrize(
    ("section", "field", "value", "message"),
    [
        pytest.param("vision", "patch_size", 7, "image_size=64 must be a multiple of patch_size=7", id="patch"),
        pytest.param("vision", "num_heads", 3, "hidden_size=64 must be a multiple of num_heads=3", id="vision-heads"),
        pytest.param("vision", "downsample_ratio", 0.4, "downsample_ratio=0.4", id="ratio"),
        pytest.param("llm", "num_kv_heads", 3, "num_heads=4 must be a multiple of num_kv_heads=3", id="kv-heads"),
        pytest.param("llm", "max_position_embeddings", 32, "max_position_embeddings=32", id="positions"),
        pytest.param("action_head", "max_seq_len", 8, "action_horizon=16 exceeds max_seq_len=8", id="seq-len"),
        pytest.param("action_head", "noise_s", 1.5, "noise_s", id="noise-s"),
        pytest.param("llm", "select_layer", 0, "select_layer", id="select-layer"),
    ],
)
def test_invalid_values_name_field(config: ModelConfig, section: str, field: str, value, message: str):
    data = config.model_dump()
    data[section][field] = value
    with pytest.raises(ValueError, match=message):
        ModelConfig.model_validate(data)


def test_every_named_preset_is_built_and_no_other():
    from fleetloop.system import config as model_config
    from fleetloop.system.presets import MODEL_PRESETS

    assert sorted(model_config._PRESETS) == sorted(MODEL_PRESETS) == model_config.preset_names()
    for name in MODEL_PRESETS:
        assert isinstance(model_preset(name), ModelConfig)


def test_cli_config_checks_import_no_torch():
    """The run config validates model.preset on every CLI command; that must stay cheap."""
    code = "import sys; from fleetloop.config import load_config; load_config('default', []); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
