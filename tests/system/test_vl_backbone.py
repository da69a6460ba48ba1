"""System 2: shapes of each stage and input validation."""

import pytest
import torch

from fleetloop.system import ModelConfig, VisionLanguageBackbone
from fleetloop.system.backbone import pixel_shuffle


@pytest.fixture
def backbone(config: ModelConfig) -> VisionLanguageBackbone:
    torch.manual_seed(0)
    return VisionLanguageBackbone(config.vision, config.llm, config.action_head.input_embedding_dim)


def test_stage_shapes(backbone: VisionLanguageBackbone, config: ModelConfig):
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    vision = backbone.model.vision_model(pixels)
    assert vision.shape == (2, 64, config.vision.hidden_size)
    image_tokens = backbone.model.extract_feature(pixels)
    assert image_tokens.shape == (2, 16, config.llm.hidden_size)
    ids = torch.randint(3, 259, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0
    tokens, vl_mask = backbone(pixels, ids, mask)
    assert tokens.shape == (2, 26, 128) and vl_mask.shape == (2, 26) and vl_mask.dtype == torch.bool
    assert vl_mask[:, :16].all() and vl_mask[1].sum() == 22
    assert torch.isfinite(tokens).all()


def test_mlp1_layout(backbone: VisionLanguageBackbone):
    mlp1 = backbone.model.mlp1
    assert isinstance(mlp1[0], torch.nn.LayerNorm) and mlp1[0].normalized_shape == (256,)
    assert (mlp1[1].in_features, mlp1[1].out_features, mlp1[3].out_features) == (256, 64, 64)
    assert isinstance(mlp1[2], torch.nn.GELU)


def test_pixel_shuffle_merges_2x2_neighbourhoods():
    grid = torch.arange(4 * 4, dtype=torch.float32).reshape(1, 4, 4, 1)
    out = pixel_shuffle(grid, 2)
    assert out.shape == (1, 2, 2, 4)
    assert sorted(out[0, 0, 0].tolist()) == [0.0, 1.0, 4.0, 5.0]
    assert sorted(out[0, 1, 1].tolist()) == [10.0, 11.0, 14.0, 15.0]


@pytest.mark.parametrize(
    ("pixels", "ids", "message"),
    [
        pytest.param(
            (2, 3, 32, 32), (2, 10), r"pixel_values: expected shape \(\*, 3, 64, 64\), got \(2, 3, 32, 32\)", id="size"
        ),
        pytest.param((2, 3, 64, 64), (3, 10), r"input_ids: expected shape \(2, \*\), got \(3, 10\)", id="batch"),
        pytest.param((2, 3, 64, 64), (2, 49), "max_text_tokens=48", id="too-long"),
    ],
)
def test_bad_shapes(backbone: VisionLanguageBackbone, pixels, ids, message):
    with pytest.raises(ValueError, match=message):
        backbone(torch.zeros(pixels), torch.zeros(ids, dtype=torch.long), torch.ones(ids, dtype=torch.long))
