"""The n1-2b tokenizer: loaded from a local directory only, same batch format as ByteTokenizer."""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from fleetloop.system import PretrainedTokenizer, Processor, load_tokenizer, model_preset


@pytest.fixture
def tokenizer_dir(tmp_path):
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, "pick": 3, "the": 4, "cup": 5}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<eos>")
    fast.save_pretrained(str(tmp_path))
    return tmp_path


def test_loads_from_a_local_directory(tokenizer_dir):
    config = model_preset("n1-2b").llm
    tokenizer = load_tokenizer(config, tokenizer_dir)
    assert isinstance(tokenizer, PretrainedTokenizer) and tokenizer.vocab_size == 6
    ids, mask = tokenizer(["pick the cup", "pick mug"])
    assert ids.shape == mask.shape == (2, config.max_text_tokens) and mask.dtype == torch.bool
    assert ids[0, :3].tolist() == [3, 4, 5] and ids[1, :2].tolist() == [3, 2]
    assert mask[0].sum() == 3 and (ids[0, 3:] == 1).all(), "padded with eos when there is no pad token"


def test_n1_2b_needs_a_directory(tmp_path):
    with pytest.raises(ValueError, match="needs a local tokenizer directory"):
        Processor(model_preset("n1-2b"))
    with pytest.raises(ValueError, match="is not a directory"):
        load_tokenizer(model_preset("n1-2b").llm, tmp_path / "absent")
    with pytest.raises(ValueError, match="no tokenizer could be loaded"):
        load_tokenizer(model_preset("n1-2b").llm, tmp_path)


def test_tiny_keeps_the_byte_tokenizer():
    assert load_tokenizer(model_preset("tiny").llm).vocab_size == 259
