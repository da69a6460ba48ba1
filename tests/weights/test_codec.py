"""Tensor <-> bytes codec: exact round trips, little-endian layout and errors that name the tensor."""

import pytest
import torch

from fleetloop.protos import codec, weights_pb2


def _sample_state_dict() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "float32": torch.randn(3, 4, generator=gen),
        "bfloat16": torch.randn(5, 2, generator=gen).to(torch.bfloat16),
        "float16": torch.randn(7, generator=gen).to(torch.float16),
        "float64": torch.randn(2, 2, generator=gen, dtype=torch.float64),
        "int64": torch.arange(-5, 5),
        "int8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "uint8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "non_contiguous": torch.arange(12.0).reshape(3, 4).t(),
    }


def test_round_trip_is_exact_for_every_dtype():
    state_dict = _sample_state_dict()
    metas, blobs = codec.encode_state_dict(state_dict)
    assert [m.name for m in metas] == list(state_dict)
    for meta, blob in zip(metas, blobs):
        original = state_dict[meta.name]
        decoded = codec.decode_tensor(meta, blob)
        assert decoded.dtype == original.dtype, meta.name
        assert decoded.shape == original.shape, meta.name
        assert torch.equal(decoded, original), meta.name
        assert meta.nbytes == len(blob) == original.numel() * original.element_size()
        assert meta.sha256 == codec.sha256_hex(blob)


def test_bytes_are_little_endian():
    meta, data = codec.encode_tensor("x", torch.tensor([1], dtype=torch.int32))
    assert data == b"\x01\x00\x00\x00"
    assert (meta.dtype, list(meta.shape)) == ("int32", [1])


def test_encoding_snapshots_the_tensor():
    tensor = torch.ones(4)
    meta, data = codec.encode_tensor("w", tensor)
    tensor.add_(1)
    assert torch.equal(codec.decode_tensor(meta, data), torch.ones(4))


def test_manifest_sha256_covers_version_and_metadata():
    metas, _ = codec.encode_state_dict({"a": torch.ones(2), "b": torch.zeros(3)})
    digest = codec.manifest_sha256(1, metas)
    assert digest == codec.manifest_sha256(1, [weights_pb2.TensorMeta.FromString(m.SerializeToString()) for m in metas])
    assert digest != codec.manifest_sha256(2, metas)
    metas[1].shape[:] = [1, 3]
    assert digest != codec.manifest_sha256(1, metas)


def test_unsupported_dtype_names_the_tensor():
    with pytest.raises(codec.CodecError, match="'layer.z'.*complex64"):
        codec.encode_state_dict({"layer.z": torch.zeros(2, dtype=torch.complex64)})


def test_non_tensor_value_names_the_key():
    with pytest.raises(codec.CodecError, match="'step'"):
        codec.encode_state_dict({"step": 3})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(lambda m, d: (m, d[:-1]), "got 15 bytes, expected 16", id="short_data"),
        pytest.param(lambda m, d: (m, d[:-1] + bytes([d[-1] ^ 1])), "sha256", id="flipped_byte"),
        pytest.param(lambda m, d: (_with(m, dtype="float8"), d), "unknown dtype 'float8'", id="unknown_dtype"),
        pytest.param(lambda m, d: (_with(m, shape=[2, 3]), d), "nbytes 16 does not match", id="shape_mismatch"),
        pytest.param(lambda m, d: (_with(m, nbytes=12), d), "nbytes 12 does not match", id="nbytes_mismatch"),
    ],
)
def test_decode_rejects_mismatch_naming_the_tensor(change, message):
    meta, data = codec.encode_tensor("policy.w", torch.arange(4, dtype=torch.float32))
    meta, data = change(meta, data)
    with pytest.raises(codec.CodecError, match="'policy.w'") as info:
        codec.decode_tensor(meta, data)
    assert message in str(info.value)


def _with(meta: weights_pb2.TensorMeta, **fields) -> weights_pb2.TensorMeta:
    changed = weights_pb2.TensorMeta()
    changed.CopyFrom(meta)
    for name, value in fields.items():
        if name == "shape":
            changed.shape[:] = value
        else:
            setattr(changed, name, value)
    return changed
