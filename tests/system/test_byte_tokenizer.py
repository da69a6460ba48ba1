"""ByteTokenizer encoding, truncation and batching."""

import pytest
import torch

from fleetloop.system import ByteTokenizer


def test_encode_decode_round_trip():
    tok = ByteTokenizer(max_length=32)
    ids = tok.encode("grasp the mug ☕")
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == "grasp the mug ☕"


def test_truncation_keeps_bos_and_eos():
    tok = ByteTokenizer(max_length=6)
    ids = tok.encode("abcdefgh")
    assert len(ids) == 6 and ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == "abcd"


def test_batch_is_right_padded_and_deterministic():
    tok = ByteTokenizer(max_length=8)
    ids, mask = tok(["ab", "abcdefghij"])
    assert ids.shape == mask.shape == (2, 8) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert mask[0].tolist() == [True] * 4 + [False] * 4 and mask[1].all()
    assert (ids[0, 4:] == tok.pad_id).all()
    again, _ = tok(["ab", "abcdefghij"])
    assert torch.equal(ids, again)


def test_max_length_too_small():
    with pytest.raises(ValueError, match="max_length"):
        ByteTokenizer(max_length=1)
