"""Tensor <-> bytes codec shared by the weight publisher and its subscribers.

A tensor travels as its raw little-endian bytes plus a ``TensorMeta`` (name, dtype name,
shape, nbytes, sha256). A version's manifest checksum is the sha256 of a canonical JSON
rendering of its version number and tensor metadata, so any language can recompute it.
"""

import hashlib
import json
import math
import sys
from collections.abc import Iterable, Mapping

import torch

from fleetloop.protos import weights_pb2

DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
"""Wire dtype name -> torch dtype."""

MAX_SUBSCRIBER_ID_CHARS = 256
"""Longest ``subscriber_id`` a WeightService request may carry (actor ids are short names)."""

DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}
"""Torch dtype -> wire dtype name."""

MAX_TENSOR_DIMS = 16
"""Most dims a tensor may have: model weights have at most 5 (conv kernels); the cap keeps the shape
lists of a forged manifest short."""
MAX_TENSOR_BYTES = 1 << 33
"""Largest tensor (8 GiB), about 4x the largest tensor of a 7B-parameter model in float32 (a
152k x 3584 embedding, 2.2 GB). A subscriber checks it on the manifest, before buffering any of a
tensor's bytes, so a manifest cannot make it allocate without bound; it also keeps every dim within
torch's int64 sizes."""


class CodecError(ValueError):
    """A tensor or manifest cannot be encoded or does not match its metadata."""


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def manifest_sha256(version: int, tensors: Iterable[weights_pb2.TensorMeta]) -> str:
    """Hex sha256 of the canonical manifest: compact, key-sorted JSON of
    ``{"version": v, "tensors": [{"name", "dtype", "shape", "nbytes", "sha256"}, ...]}``."""
    canonical = {
        "version": int(version),
        "tensors": [
            {
                "name": meta.name,
                "dtype": meta.dtype,
                "shape": [int(d) for d in meta.shape],
                "nbytes": int(meta.nbytes),
                "sha256": meta.sha256,
            }
            for meta in tensors
        ],
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return sha256_hex(text.encode("ascii"))


def _swap_if_big_endian(flat_bytes: torch.Tensor, itemsize: int) -> torch.Tensor:
    """Byte-swap a flat uint8 view between host and little-endian order (a no-op on little-endian hosts)."""
    if sys.byteorder == "little" or itemsize == 1:
        return flat_bytes
    return flat_bytes.view(-1, itemsize).flip(1).reshape(-1)


def encode_tensor(name: str, tensor: torch.Tensor) -> tuple[weights_pb2.TensorMeta, bytes]:
    """Snapshot ``tensor`` as CPU little-endian bytes with its metadata.

    Raises:
        CodecError: the dtype has no wire name, or the tensor exceeds MAX_TENSOR_DIMS or MAX_TENSOR_BYTES.
    """
    dtype_name = DTYPE_NAMES.get(tensor.dtype)
    if dtype_name is None:
        raise CodecError(f"tensor {name!r}: dtype {tensor.dtype} is not supported; use one of {sorted(DTYPES)}")
    _check_limits(name, list(tensor.shape), tensor.dtype.itemsize)
    flat = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
    data = _swap_if_big_endian(flat, tensor.dtype.itemsize).numpy().tobytes()
    meta = weights_pb2.TensorMeta(
        name=name, dtype=dtype_name, shape=list(tensor.shape), nbytes=len(data), sha256=sha256_hex(data)
    )
    return meta, data


def encode_state_dict(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[list[weights_pb2.TensorMeta], list[bytes]]:
    """Snapshot every tensor of ``state_dict`` (in its order) as metadata and bytes.

    Raises:
        CodecError: a value is not a tensor or has an unsupported dtype.
    """
    metas, blobs = [], []
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise CodecError(f"tensor {name!r}: expected torch.Tensor, got {type(tensor).__name__}")
        meta, data = encode_tensor(name, tensor)
        metas.append(meta)
        blobs.append(data)
    return metas, blobs


def encode_chunks(index: int, blob: bytes, chunk_bytes: int) -> list[bytes]:
    """Tensor ``index``'s bytes as serialized WeightChunk messages of at most ``chunk_bytes`` data each."""
    view = memoryview(blob)
    return [
        weights_pb2.WeightChunk(
            tensor_chunk=weights_pb2.TensorChunk(
                tensor_index=index, offset=offset, data=bytes(view[offset : offset + chunk_bytes])
            )
        ).SerializeToString()
        for offset in range(0, len(blob), chunk_bytes)
    ]


def _check_limits(name: str, shape: list[int], itemsize: int) -> None:
    """Raises CodecError, naming the tensor and the limit, if ``shape`` has more than MAX_TENSOR_DIMS
    dims or the tensor, or any one dim, exceeds MAX_TENSOR_BYTES."""
    if len(shape) > MAX_TENSOR_DIMS:
        raise CodecError(f"tensor {name!r}: {len(shape)} dims exceed the limit of {MAX_TENSOR_DIMS} dims")
    nbytes = math.prod(shape) * itemsize
    if nbytes > MAX_TENSOR_BYTES or any(dim > MAX_TENSOR_BYTES for dim in shape):
        raise CodecError(f"tensor {name!r}: shape {shape} ({nbytes} bytes) exceeds the limit of "
                         f"{MAX_TENSOR_BYTES} bytes per tensor")


def expected_nbytes(meta: weights_pb2.TensorMeta) -> int:
    """Byte length implied by ``meta``'s dtype and shape.

    Raises:
        CodecError: the dtype is unknown, the shape exceeds MAX_TENSOR_DIMS or MAX_TENSOR_BYTES, or
            ``meta.nbytes`` disagrees with dtype and shape.
    """
    dtype = DTYPES.get(meta.dtype)
    if dtype is None:
        raise CodecError(f"tensor {meta.name!r}: unknown dtype {meta.dtype!r}; expected one of {sorted(DTYPES)}")
    shape = [int(dim) for dim in meta.shape]
    _check_limits(meta.name, shape, dtype.itemsize)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != meta.nbytes:
        raise CodecError(
            f"tensor {meta.name!r}: nbytes {meta.nbytes} does not match dtype {meta.dtype} "
            f"and shape {list(meta.shape)} ({nbytes} bytes)"
        )
    return nbytes


def decode_tensor(meta: weights_pb2.TensorMeta, data: bytes | bytearray) -> torch.Tensor:
    """Rebuild a CPU tensor from ``data`` after checking its dtype, shape, length and sha256.

    A ``bytearray`` is wrapped without copying; the tensor then shares its memory.

    Raises:
        CodecError: naming the tensor, if anything does not match ``meta``.
    """
    nbytes = expected_nbytes(meta)
    if len(data) != nbytes:
        raise CodecError(f"tensor {meta.name!r}: got {len(data)} bytes, expected {nbytes}")
    digest = sha256_hex(data)
    if digest != meta.sha256:
        raise CodecError(f"tensor {meta.name!r}: sha256 {digest} does not match manifest {meta.sha256}")
    dtype = DTYPES[meta.dtype]
    shape = [int(d) for d in meta.shape]
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    buffer = data if isinstance(data, bytearray) else bytearray(data)
    flat = torch.frombuffer(buffer, dtype=torch.uint8)
    return _swap_if_big_endian(flat, dtype.itemsize).view(dtype).reshape(shape)
