from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WatchRequest(_message.Message):
    __slots__ = ("subscriber_id", "known_version", "promoted_only")
    SUBSCRIBER_ID_FIELD_NUMBER: _ClassVar[int]
    KNOWN_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_ONLY_FIELD_NUMBER: _ClassVar[int]
    subscriber_id: str
    known_version: int
    promoted_only: bool
    def __init__(self, subscriber_id: _Optional[str] = ..., known_version: _Optional[int] = ..., promoted_only: _Optional[bool] = ...) -> None: ...

class VersionNotice(_message.Message):
    __slots__ = ("version", "num_tensors", "total_bytes", "manifest_sha256", "published_unix_ms")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_TENSORS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    version: int
    num_tensors: int
    total_bytes: int
    manifest_sha256: str
    published_unix_ms: int
    def __init__(self, version: _Optional[int] = ..., num_tensors: _Optional[int] = ..., total_bytes: _Optional[int] = ..., manifest_sha256: _Optional[str] = ..., published_unix_ms: _Optional[int] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("subscriber_id", "version", "base_version", "have_tensors")
    SUBSCRIBER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    HAVE_TENSORS_FIELD_NUMBER: _ClassVar[int]
    subscriber_id: str
    version: int
    base_version: int
    have_tensors: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, subscriber_id: _Optional[str] = ..., version: _Optional[int] = ..., base_version: _Optional[int] = ..., have_tensors: _Optional[_Iterable[int]] = ...) -> None: ...

class TensorMeta(_message.Message):
    __slots__ = ("name", "dtype", "shape", "nbytes", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    nbytes: int
    sha256: str
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., nbytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class Manifest(_message.Message):
    __slots__ = ("version", "tensors", "total_bytes", "base_version", "from_base", "resumed")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    FROM_BASE_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    version: int
    tensors: _containers.RepeatedCompositeFieldContainer[TensorMeta]
    total_bytes: int
    base_version: int
    from_base: _containers.RepeatedScalarFieldContainer[int]
    resumed: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, version: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[TensorMeta, _Mapping]]] = ..., total_bytes: _Optional[int] = ..., base_version: _Optional[int] = ..., from_base: _Optional[_Iterable[int]] = ..., resumed: _Optional[_Iterable[int]] = ...) -> None: ...

class TensorChunk(_message.Message):
    __slots__ = ("tensor_index", "offset", "data")
    TENSOR_INDEX_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    tensor_index: int
    offset: int
    data: bytes
    def __init__(self, tensor_index: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Trailer(_message.Message):
    __slots__ = ("version", "manifest_sha256")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    version: int
    manifest_sha256: str
    def __init__(self, version: _Optional[int] = ..., manifest_sha256: _Optional[str] = ...) -> None: ...

class WeightChunk(_message.Message):
    __slots__ = ("manifest", "tensor_chunk", "trailer")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    TENSOR_CHUNK_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    manifest: Manifest
    tensor_chunk: TensorChunk
    trailer: Trailer
    def __init__(self, manifest: _Optional[_Union[Manifest, _Mapping]] = ..., tensor_chunk: _Optional[_Union[TensorChunk, _Mapping]] = ..., trailer: _Optional[_Union[Trailer, _Mapping]] = ...) -> None: ...

class AppliedReport(_message.Message):
    __slots__ = ("subscriber_id", "version", "applied_unix_ms")
    SUBSCRIBER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    subscriber_id: str
    version: int
    applied_unix_ms: int
    def __init__(self, subscriber_id: _Optional[str] = ..., version: _Optional[int] = ..., applied_unix_ms: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
