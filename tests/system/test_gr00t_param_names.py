"""Parameter names follow the released GR00T-N1-2B state_dict, so a converter can map them.

For every reference name whose layer indices exist in the tiny model, the tiny model has a
tensor of that name with the same number of dims.
"""

import re

import pytest
import torch

from fleetloop.system import DualSystemPolicy, gr00t_name_map, model_preset
from fleetloop.system.normalization import statistics_buffers

LAYER_LISTS = {
    "vision_model.encoder.layers": lambda c: c.vision.num_layers,
    "language_model.model.layers": lambda c: c.llm.select_layer,
    "transformer_blocks": lambda c: c.action_head.dit.num_layers,
}


@pytest.fixture(scope="module")
def reference(gr00t_reference) -> dict[str, list]:
    return gr00t_reference


def _built_in_tiny(name: str, config) -> bool:
    for prefix, count in LAYER_LISTS.items():
        match = re.search(re.escape(prefix) + r"\.(\d+)\.", name)
        if match and int(match.group(1)) >= count(config):
            return False
    return True


@pytest.mark.parametrize("group", ["action_head.", "backbone."])
def test_reference_names_exist_in_tiny(model: DualSystemPolicy, reference, group: str):
    ours = model.state_dict()
    wanted = [n for n in reference if n.startswith(group) and _built_in_tiny(n, model.config)]
    assert wanted
    missing = [n for n in wanted if n not in ours]
    assert not missing, missing
    wrong_rank = [n for n in wanted if len(reference[n][0]) != ours[n].ndim]
    assert not wrong_rank, wrong_rank


def test_tiny_has_no_parameters_outside_reference(model: DualSystemPolicy, reference):
    generic = {re.sub(r"\.\d+\.", ".N.", n) for n in reference}
    extra = [n for n, _ in model.named_parameters() if re.sub(r"\.\d+\.", ".N.", n) not in generic]
    assert not extra, extra


def test_n1_2b_matches_the_release_on_the_meta_device(reference):
    with torch.device("meta"):
        model = DualSystemPolicy(model_preset("n1-2b"))
    params = dict(model.named_parameters())
    assert len(params) == 802
    assert sum(p.numel() for p in params.values()) == 2_190_016_752
    assert sum(p.numel() for n, p in params.items() if n.startswith("action_head.model.")) == 537_803_776
    names = gr00t_name_map(model.config)
    assert set(names) == set(reference)
    wrong = [n for n in reference if list(params[names[n]].shape) != reference[n][0]]
    assert not wrong, wrong
    statistics = set(statistics_buffers(32, {"state": 64, "action": 32}))
    assert set(model.state_dict()) - set(params) == statistics, "only statistics buffers are persistent extras"


def test_category_specific_layout(model: DualSystemPolicy, reference):
    """W is [num_embodiments, in, out] and b is [num_embodiments, out], as released."""
    ours = model.state_dict()
    head = model.config.action_head
    for name in ("action_head.action_encoder.W1.W", "action_head.state_encoder.layer1.W"):
        assert reference[name][0][:2] == [32, ours[name].shape[1]]
    assert tuple(ours["action_head.action_encoder.W1.W"].shape) == (32, head.max_action_dim, 128)
    assert tuple(ours["action_head.action_decoder.layer2.b"].shape) == (32, head.max_action_dim)
