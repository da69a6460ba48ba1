"""Fuzzing the WeightService over real gRPC on 127.0.0.1.

(a) Arbitrary bytes and (b) well-formed requests with hypothesis-drawn field values are sent to every
method of a started WeightPublisher (bearer token on); each call must get exactly the status a model
of the publisher predicts (never UNKNOWN, i.e. a handler crash, and never a deadline where an answer
is due), and the server must stay healthy and serve a valid pull afterwards.
(c) A real WeightSubscriber pulls mutated versions from a scripted WeightService: a version is applied
only when exactly what its manifest vouches for arrived; otherwise it is rejected, counted in
``fleetloop_weights_rejected_total``, and the subscriber goes on to apply the next good version.
"""

import re
import threading
import time
from collections import Counter
from concurrent import futures

import grpc
import pytest
import torch
from fleetloop.actors.subscriber import REJECTED, WeightSubscriber
from fleetloop.learner.publisher import (
    _MAX_REQUEST_BYTES,
    HEALTH_SERVICES,
    MAX_SUBSCRIBER_ID_CHARS,
    WeightPublisher,
    WeightServicer,
    add_servicer_to_server,
)
from fleetloop.protos import codec, weights_pb2
from hypothesis import event, given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from tests.fuzz.conftest import (
    AUTH,
    AUTH_CHOICES,
    CALL_DEADLINE_S,
    HEALTH_SERVICE,
    TOKEN,
    UNDECODABLE,
    Method,
    assert_serving,
    edit_bytes,
    fuzz_settings,
    health_expectation,
    invoke,
    methods_of,
    raw_channel,
)

pytestmark = pytest.mark.timeout(180)

METHODS = methods_of(weights_pb2.DESCRIPTOR.services_by_name["WeightService"], HEALTH_SERVICE)
PULL = next(method for method in METHODS if method.name == "PullVersion")
BLOCKED_DEADLINE_S = 0.2
"""Deadline of a WatchVersions call with nothing newer to announce: it waits for a publish by design."""
CHUNK_BYTES = 32
Code = grpc.StatusCode


def _state_dict(seed: int) -> dict[str, torch.Tensor]:
    """Small tensors of every kind the codec meets: several chunks, one chunk, 0-dim, bool, empty,
    and one that never changes (sent as from_base in deltas)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "encoder.weight": torch.randn(8, 8, generator=gen).to(torch.bfloat16),
        "encoder.bias": torch.randn(8, generator=gen),
        "frozen.weight": torch.arange(24, dtype=torch.float16).reshape(4, 6),
        "steps": torch.tensor(seed, dtype=torch.int64),
        "mask": torch.rand(5, generator=gen) > 0.5,
        "empty": torch.zeros(0, 3),
    }


# ---- (a) and (b): requests to a real publisher ------------------------------------------------------


@pytest.fixture
def publisher():
    """A started publisher holding versions 2 and 3 (version 1 already evicted), token required."""
    pub = WeightPublisher(chunk_bytes=CHUNK_BYTES, max_message_bytes=1 << 20, keep_versions=2, token=TOKEN)
    pub.start()
    for seed in (1, 2, 3):
        pub.publish(_state_dict(seed))
    yield pub
    pub.stop(grace=None)


@pytest.fixture
def channel(publisher):
    with raw_channel(f"127.0.0.1:{publisher.port}") as chan:
        yield chan


def _expected(pub: WeightPublisher, method: Method, request, auth: str) -> Code:
    """The status the publisher must answer a parsed ``request`` with."""
    if method.health:
        return health_expectation(method, request, HEALTH_SERVICES)
    if auth != "good":
        return Code.UNAUTHENTICATED
    if len(request.subscriber_id) > MAX_SUBSCRIBER_ID_CHARS:
        return Code.INVALID_ARGUMENT
    if method.name == "WatchVersions":
        return Code.OK if request.known_version < pub.latest_version else Code.DEADLINE_EXCEEDED
    if method.name == "PullVersion":
        return Code.OK if request.version == 0 or request.version in pub.held_versions() else Code.NOT_FOUND
    assert method.name == "ReportApplied", f"no model of {method.path}: add one"
    valid = request.subscriber_id and 0 < request.version <= pub.latest_version
    return Code.OK if valid else Code.INVALID_ARGUMENT


def _check_answer(pub: WeightPublisher, method: Method, request, messages: list[bytes]) -> None:
    """The content of an OK answer matches the request."""
    if method.name == "WatchVersions":
        assert weights_pb2.VersionNotice.FromString(messages[0]).version == pub.latest_version
    elif method.name == "PullVersion":
        chunks = [weights_pb2.WeightChunk.FromString(message) for message in messages]
        manifest, trailer = chunks[0].manifest, chunks[-1].trailer
        assert chunks[0].WhichOneof("kind") == "manifest" and chunks[-1].WhichOneof("kind") == "trailer"
        assert manifest.version == trailer.version == (request.version or pub.latest_version)
        assert list(manifest.resumed) == sorted({i for i in request.have_tensors if i < len(manifest.tensors)})
        skipped = set(manifest.resumed) | set(manifest.from_base)
        assert all(c.tensor_chunk.tensor_index not in skipped for c in chunks[1:-1])
    elif method.name == "ReportApplied":
        assert pub.applied_versions()[request.subscriber_id] >= request.version


def _undecodable() -> float:
    return REGISTRY.get_sample_value("fleetloop_grpc_undecodable_requests_total", {"service": "weights"}) or 0.0


def _check_call(pub: WeightPublisher, channel: grpc.Channel, method: Method, payload: bytes, auth: str) -> str:
    """Send ``payload`` to ``method``, check the status against the model, then the server's health
    and a valid pull. Returns the outcome as a label for hypothesis' statistics."""
    request = method.parse(payload)
    if len(payload) > _MAX_REQUEST_BYTES:
        want = Code.RESOURCE_EXHAUSTED
    elif request is None:
        want = Code.INTERNAL
    else:
        want = _expected(pub, method, request, auth)
    undecodable = _undecodable()
    timeout = BLOCKED_DEADLINE_S if want == Code.DEADLINE_EXCEEDED else CALL_DEADLINE_S
    whole = method.name == "PullVersion"  # a finite stream: read it to its end
    outcome = invoke(channel, method, payload, AUTH[auth], timeout, max_messages=10_000 if whole else 1)
    assert outcome.code == want, f"{method.path} ({len(payload)} bytes, auth {auth}): got {outcome.code.name} " \
                                 f"{outcome.details!r}, expected {want.name}"
    if want == Code.INTERNAL:
        assert outcome.details == UNDECODABLE
    assert _undecodable() == undecodable + (want == Code.INTERNAL)
    if want == Code.OK:
        _check_answer(pub, method, request, outcome.messages)
    assert_serving(channel, HEALTH_SERVICES)
    pull = invoke(channel, PULL, weights_pb2.PullRequest(subscriber_id="probe").SerializeToString(),
                  AUTH["good"], max_messages=10_000)
    assert pull.code == Code.OK and weights_pb2.WeightChunk.FromString(pull.messages[-1]).trailer.version == 3
    return f"{method.name}: {want.name}"


def _rarely(common: st.SearchStrategy, rare: st.SearchStrategy) -> st.SearchStrategy:
    """``rare`` about one draw in eight (values near the size limit make slow examples)."""
    return st.integers(0, 7).flatmap(lambda pick: rare if pick == 0 else common)


VERSIONS = st.one_of(st.sampled_from([0, 1, 2, 3, 4]), st.integers(0, 2**64 - 1))
IDS = _rarely(st.one_of(st.just(""), st.text(max_size=40)),
              st.one_of(st.integers(MAX_SUBSCRIBER_ID_CHARS, MAX_SUBSCRIBER_ID_CHARS + 1),
                        st.integers(_MAX_REQUEST_BYTES - 40, _MAX_REQUEST_BYTES + 40)).map(lambda n: "s" * n))
HAVE = _rarely(st.lists(st.integers(0, 2**32 - 1), max_size=16),
               st.integers(300_000, 400_000).map(lambda n: list(range(n))))  # ~0.9-1.2 MB packed


def _request(method: Method) -> st.SearchStrategy:
    """Well-formed requests of ``method`` with edge values: empty and oversized ids, huge versions,
    long repeated fields, unknown health services."""
    if method.health:
        return st.builds(method.request, **({} if method.name == "List" else {
            "service": st.one_of(st.sampled_from(HEALTH_SERVICES), st.text(max_size=40))}))
    if method.name == "WatchVersions":
        return st.builds(weights_pb2.WatchRequest, subscriber_id=IDS, known_version=VERSIONS)
    if method.name == "PullVersion":
        return st.builds(weights_pb2.PullRequest, subscriber_id=IDS, version=VERSIONS, base_version=VERSIONS,
                         have_tensors=HAVE)
    return st.builds(weights_pb2.AppliedReport, subscriber_id=IDS, version=VERSIONS,
                     applied_unix_ms=st.integers(-(2**63), 2**63 - 1))


@st.composite
def _mutated(draw, method: Method) -> bytes:
    """A serialized valid request of ``method`` with a few bytes overwritten, inserted or cut off."""
    payload = bytearray(draw(_request(method)).SerializeToString()[:4096])
    edit_bytes(draw, payload)
    return bytes(payload)


@fuzz_settings(max_examples=300, deadline_s=10)
@given(data=st.data())
def test_raw_bytes_to_every_method(publisher, channel, data):
    method = data.draw(st.sampled_from(METHODS), label="method")
    payload = data.draw(st.one_of(st.binary(max_size=512), _mutated(method)), label="payload")
    event(_check_call(publisher, channel, method, payload, data.draw(st.sampled_from(AUTH_CHOICES), label="auth")))


@fuzz_settings(max_examples=250, deadline_s=10)
@given(data=st.data())
def test_well_formed_requests_with_edge_values(publisher, channel, data):
    method = data.draw(st.sampled_from(METHODS), label="method")
    payload = data.draw(_request(method), label="request").SerializeToString()
    event(_check_call(publisher, channel, method, payload, data.draw(st.sampled_from(AUTH_CHOICES), label="auth")))


@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_oversized_request_is_refused_on_every_method(publisher, channel, method):
    _check_call(publisher, channel, method, b"\x00" * (_MAX_REQUEST_BYTES + 1), "good")


# ---- (c): mutated streams to a real subscriber ------------------------------------------------------


class ScriptedWeights:
    """A WeightService that announces the versions it is given and streams, for a pull of one, exactly
    the messages scripted for it (whatever the request's base or resumed tensors)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._notices: dict[int, weights_pb2.VersionNotice] = {}
        self._streams: dict[int, list[bytes]] = {}
        self.pulls: Counter[int] = Counter()

    def reset(self) -> None:
        with self._cond:
            self._notices.clear()
            self._streams.clear()
            self.pulls.clear()

    def script(self, notice: weights_pb2.VersionNotice, messages: list[bytes]) -> None:
        with self._cond:
            self._notices[notice.version] = notice
            self._streams[notice.version] = messages
            self._cond.notify_all()

    def WatchVersions(self, request, context):
        known = request.known_version
        while context.is_active():
            with self._cond:
                newer = [version for version in self._notices if version > known]
                if not newer:
                    self._cond.wait(0.05)
                    continue
                notice = self._notices[max(newer)]
            known = notice.version
            yield notice

    def PullVersion(self, request, context):
        with self._cond:
            messages = self._streams.get(request.version)
            self.pulls[request.version] += 1
        if messages is None:
            context.abort(Code.NOT_FOUND, f"version {request.version} is not scripted")
        yield from messages

    def ReportApplied(self, request, context):
        return weights_pb2.Ack()


@pytest.fixture
def scripted():
    servicer = ScriptedWeights()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    add_servicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(None)


def _truth() -> tuple[dict[int, dict[str, torch.Tensor]], dict[tuple[int, int], list[weights_pb2.WeightChunk]]]:
    """Versions 1-3 and their real PullVersion streams by (version, base): as the publisher sends them."""
    pub = WeightPublisher(chunk_bytes=CHUNK_BYTES, keep_versions=3)
    versions = {seed: _state_dict(seed) for seed in (1, 2, 3)}
    for state in versions.values():
        pub.publish(state)
    streams = {}
    for version, base in ((1, 0), (2, 0), (2, 1), (3, 0)):
        request = weights_pb2.PullRequest(version=version, base_version=base)
        streams[version, base] = [m if isinstance(m, weights_pb2.WeightChunk) else weights_pb2.WeightChunk.FromString(m)
                                  for m in WeightServicer(pub).PullVersion(request, None)]
    return versions, streams


VERSIONS_TRUTH, STREAMS = _truth()


def _notice(manifest: weights_pb2.Manifest) -> weights_pb2.VersionNotice:
    return weights_pb2.VersionNotice(version=manifest.version, num_tensors=len(manifest.tensors),
                                     total_bytes=manifest.total_bytes,
                                     manifest_sha256=codec.manifest_sha256(manifest.version, manifest.tensors))


def _copy(messages: list[weights_pb2.WeightChunk]) -> list[weights_pb2.WeightChunk]:
    return [weights_pb2.WeightChunk.FromString(m.SerializeToString()) for m in messages]


def _in_order(messages: list[weights_pb2.WeightChunk]) -> bool:
    """Manifest first, trailer last, every tensor's chunks in offset order: a valid interleaving."""
    kinds = [m.WhichOneof("kind") for m in messages]
    if kinds[0] != "manifest" or kinds[-1] != "trailer" or "manifest" in kinds[1:] or "trailer" in kinds[:-1]:
        return False
    last: dict[int, int] = {}
    for message in messages[1:-1]:
        chunk = message.tensor_chunk
        if chunk.offset < last.get(chunk.tensor_index, -1):
            return False
        last[chunk.tensor_index] = chunk.offset
    return True


class Case:
    """A mutated version-2 stream and what the subscriber must do with it: ``verdict`` is ``reject``
    (never apply), ``apply`` (apply exactly), or ``either`` (apply exactly what the manifest vouches
    for, or reject); ``countable`` is False only when the first message cannot even be parsed."""

    def __init__(self, op: str, messages: list, notice: weights_pb2.VersionNotice, verdict: str,
                 countable: bool = True):
        self.op, self.messages, self.notice, self.verdict, self.countable = op, messages, notice, verdict, countable

    def wire(self) -> list[bytes]:
        return [m if isinstance(m, bytes) else m.SerializeToString() for m in self.messages]

    def manifest(self) -> weights_pb2.Manifest | None:
        first = self.messages[0] if self.messages else None
        if isinstance(first, bytes):
            return None
        return first.manifest if first is not None and first.WhichOneof("kind") == "manifest" else None


def _rehash(messages: list[weights_pb2.WeightChunk]) -> weights_pb2.VersionNotice:
    """A lying publisher: make the notice of version 2 and the trailer vouch for the (edited) manifest."""
    notice = _notice(messages[0].manifest)
    notice.version = 2
    if messages[-1].WhichOneof("kind") == "trailer":
        messages[-1].trailer.manifest_sha256 = notice.manifest_sha256
    return notice


@st.composite
def _case(draw) -> Case:
    """One mutation of a real version-2 stream (full, or a delta on version 1)."""
    original = STREAMS[2, draw(st.sampled_from([0, 1]), label="base")]
    messages, notice = _copy(original), _notice(original[0].manifest)
    size = len(messages)
    op = draw(st.sampled_from(["intact", "truncate", "drop", "duplicate", "duplicate_tensor", "move", "corrupt_data",
                               "bad_offset", "bad_index", "extra", "notice_lie", "trailer_lie", "manifest_lie",
                               "flip_raw"]), label="op")
    if op == "intact":
        return Case(op, messages, notice, "apply")
    if op == "truncate":
        return Case(op, messages[:draw(st.integers(0, size - 1))], notice, "reject")
    if op == "drop":
        del messages[draw(st.integers(0, size - 1))]
        return Case(op, messages, notice, "reject")
    if op == "duplicate":
        index = draw(st.integers(0, size - 1))
        messages.insert(draw(st.integers(index + 1, size)), _copy([messages[index]])[0])
        return Case(op, messages, notice, "reject")
    if op == "duplicate_tensor":
        sent = sorted({m.tensor_chunk.tensor_index for m in messages[1:-1]})
        tensor = draw(st.sampled_from(sent))
        copies = _copy([m for m in messages[1:-1] if m.tensor_chunk.tensor_index == tensor])
        return Case(op, messages[:-1] + copies + messages[-1:], notice, "reject")
    if op == "move":
        message = messages.pop(draw(st.integers(0, size - 1)))
        messages.insert(draw(st.integers(0, size - 1)), message)
        return Case(op, messages, notice, "either" if _in_order(messages) else "reject")
    chunks = [i for i, m in enumerate(messages) if m.WhichOneof("kind") == "tensor_chunk"]
    if op == "corrupt_data":
        chunk = messages[draw(st.sampled_from(chunks))].tensor_chunk
        data = bytearray(chunk.data)
        data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        chunk.data = bytes(data)
        return Case(op, messages, notice, "reject")
    if op == "bad_offset":
        chunk = messages[draw(st.sampled_from(chunks))].tensor_chunk
        chunk.offset = draw(st.integers(0, 2**64 - 1).filter(lambda offset: offset != chunk.offset))
        return Case(op, messages, notice, "reject")
    if op == "bad_index":
        chunk = messages[draw(st.sampled_from(chunks))].tensor_chunk
        chunk.tensor_index = draw(st.integers(0, 2**32 - 1).filter(lambda index: index != chunk.tensor_index))
        return Case(op, messages, notice, "reject")
    if op == "extra":
        extra = draw(st.sampled_from([messages[0], messages[-1], *(messages[i] for i in chunks)]))
        return Case(op, messages + _copy([extra]), notice, "reject")
    if op == "notice_lie":
        notice.manifest_sha256 = draw(st.text(max_size=70).filter(lambda text: text != notice.manifest_sha256))
        return Case(op, messages, notice, "reject")
    if op == "trailer_lie":
        trailer = messages[-1].trailer
        if draw(st.booleans()):
            trailer.version = draw(st.integers(0, 2**64 - 1).filter(lambda version: version != 2))
        else:
            trailer.manifest_sha256 = draw(st.text(max_size=70).filter(lambda text: text != notice.manifest_sha256))
        return Case(op, messages, notice, "reject")
    if op == "manifest_lie":
        return _manifest_lie(draw, messages)
    index = draw(st.integers(0, size - 1))
    raw = bytearray(messages[index].SerializeToString())
    raw[draw(st.integers(0, len(raw) - 1))] ^= draw(st.integers(1, 255))
    wire: list = list(messages)
    wire[index] = bytes(raw)
    try:
        parsed = weights_pb2.WeightChunk.FromString(bytes(raw))
    except Exception:  # noqa: BLE001 - any parse failure: the subscriber's gRPC stack fails the call
        parsed = None
    if parsed is not None:
        wire[index] = parsed
    return Case(op, wire, notice, "either", countable=index > 0 or parsed is not None)


DIMS = st.one_of(st.integers(0, 8), st.integers(0, 2**64 - 1),
                 st.sampled_from([2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1]))
"""Tensor dims: small, any uint64, and the boundaries of int32/int64/uint64."""


def _manifest_lie(draw, messages: list[weights_pb2.WeightChunk]) -> Case:
    """Edit one manifest field; maybe make notice, trailer (and sizes) vouch for the lie."""
    manifest = messages[0].manifest
    meta = manifest.tensors[draw(st.integers(0, len(manifest.tensors) - 1))]
    field = draw(st.sampled_from(["sha256", "dtype", "shape", "nbytes", "name", "from_base", "resumed",
                                  "total_bytes", "version"]), label="field")
    if field == "sha256":
        meta.sha256 = draw(st.text(max_size=70).filter(lambda text: text != meta.sha256))
    elif field == "dtype":
        meta.dtype = draw(st.one_of(st.sampled_from(sorted(codec.DTYPES)), st.text(max_size=12)))
    elif field == "shape":
        meta.ClearField("shape")
        meta.shape.extend(draw(st.lists(DIMS, max_size=6)))
    elif field == "nbytes":
        meta.nbytes = draw(st.integers(0, 2**64 - 1))
    elif field == "name":
        meta.name = draw(st.one_of(st.sampled_from([m.name for m in manifest.tensors]), st.text(max_size=10)))
    elif field in ("from_base", "resumed"):
        getattr(manifest, field)[:] = draw(st.lists(st.integers(0, 2**32 - 1), max_size=4))
    elif field == "total_bytes":
        manifest.total_bytes = draw(st.integers(0, 2**64 - 1))
    else:
        manifest.version = draw(st.integers(0, 2**64 - 1))
    if draw(st.booleans(), label="consistent"):
        dtype = codec.DTYPES.get(meta.dtype)
        if field == "shape" and dtype is not None:
            meta.nbytes = _numel(meta.shape) * dtype.itemsize % 2**64
        manifest.total_bytes = sum(m.nbytes for m in manifest.tensors) % 2**64
        notice = _rehash(messages)
    else:
        notice = _notice(STREAMS[2, 0][0].manifest)
    return Case("manifest_lie", messages, notice, "reject" if field == "sha256" else "either")


def _numel(shape) -> int:
    numel = 1
    for dim in shape:
        numel *= int(dim)
    return numel


@st.composite
def _forge(draw) -> Case:
    """A self-consistent version of drawn tensors: small ones with their bytes, empty ones with wild
    dims. One with unique names, known dtypes and dims within the codec's limits must be applied as
    forged; any other must be rejected."""
    names = draw(_rarely(st.lists(st.sampled_from(["a", "b", "c", ""]), max_size=4, unique=True),
                         st.lists(st.sampled_from(["a", "b"]), min_size=2, max_size=3)), label="names")
    metas, blobs = [], []
    for name in names:
        dtype_name = draw(_rarely(st.sampled_from(sorted(codec.DTYPES)), st.text(max_size=8)), label="dtype")
        itemsize = codec.DTYPES[dtype_name].itemsize if dtype_name in codec.DTYPES else 1
        if draw(st.booleans(), label="wild"):
            shape = draw(st.lists(DIMS, max_size=70), label="shape")
            shape.insert(draw(st.integers(0, len(shape))), 0)
        else:
            shape = draw(st.lists(st.integers(1, 4), max_size=3), label="shape")
        blob = draw(st.binary(min_size=_numel(shape) * itemsize, max_size=_numel(shape) * itemsize))
        metas.append(weights_pb2.TensorMeta(name=name, dtype=dtype_name, shape=shape, nbytes=len(blob),
                                            sha256=codec.sha256_hex(blob)))
        blobs.append(blob)
    manifest = weights_pb2.Manifest(version=2, tensors=metas, total_bytes=sum(len(b) for b in blobs))
    messages = [weights_pb2.WeightChunk(manifest=manifest)]
    for index, blob in enumerate(blobs):
        messages += [weights_pb2.WeightChunk.FromString(raw) for raw in codec.encode_chunks(index, blob, CHUNK_BYTES)]
    messages.append(weights_pb2.WeightChunk(trailer=weights_pb2.Trailer(version=2)))
    notice = _rehash(messages)
    valid = len(set(names)) == len(names) and all(
        m.dtype in codec.DTYPES and len(m.shape) <= codec.MAX_TENSOR_DIMS
        and all(dim <= codec.MAX_TENSOR_BYTES for dim in m.shape) for m in metas)
    return Case("forge", messages, notice, "apply" if valid else "reject")


def _rejections(reason: str | None = None) -> float:
    """``fleetloop_weights_rejected_total`` for ``reason`` (all reasons when None)."""
    return sum(sample.value for metric in REJECTED.collect() for sample in metric.samples
               if sample.name.endswith("_total") and reason in (None, sample.labels["reason"]))


def _assert_matches(tensors: dict[str, torch.Tensor], manifest: weights_pb2.Manifest) -> None:
    """``tensors`` are exactly the manifest's tensors: names, dtypes, shapes and sha256 of the bytes."""
    assert list(tensors) == [meta.name for meta in manifest.tensors]
    for meta in manifest.tensors:
        tensor = tensors[meta.name]
        assert tensor.dtype == codec.DTYPES[meta.dtype] and list(tensor.shape) == list(meta.shape), meta.name
        assert codec.encode_tensor(meta.name, tensor)[0].sha256 == meta.sha256, meta.name


def _wait(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@fuzz_settings(max_examples=120, deadline_s=20)
@given(case=_case())
def test_subscriber_applies_only_whole_verified_versions(scripted, case):
    event(_check_subscriber(*scripted, case))


@fuzz_settings(max_examples=60, deadline_s=20)
@given(case=_forge())
def test_subscriber_on_forged_self_consistent_versions(scripted, case):
    event(_check_subscriber(*scripted, case))


def _check_subscriber(servicer: ScriptedWeights, port: int, case: Case) -> str:
    """Version 1 (valid), then ``case`` as version 2, then a valid version 3 that must be applied.
    Returns the outcome as a label for hypothesis' statistics."""
    servicer.reset()
    applied: list[tuple[int, dict[str, torch.Tensor]]] = []
    servicer.script(_notice(STREAMS[1, 0][0].manifest), [m.SerializeToString() for m in STREAMS[1, 0]])
    sub = WeightSubscriber(f"127.0.0.1:{port}", "fuzz", lambda v, t: applied.append((v, t)), timeout_s=2.0,
                           pull_timeout_s=5.0, backoff_initial_s=0.02, backoff_max_s=0.1)
    sub.start()
    try:
        assert sub.wait_for_version(1, 10.0), "the subscriber did not apply the valid version 1"
        before = _rejections()
        servicer.script(case.notice, case.wire())
        assert _wait(lambda: sub.applied_version >= 2 or _rejections() > before or servicer.pulls[2] >= 2), \
            f"{case.op}: version 2 was neither applied nor rejected (hang)"
        took = sub.applied_version >= 2
        if case.verdict == "reject":
            assert not took, f"{case.op}: a damaged version was applied"
        if case.verdict == "apply":
            assert took, f"{case.op}: a valid version was not applied"
        if took:
            _assert_matches(applied[-1][1], case.manifest())
        elif case.countable:
            assert _rejections() > before, f"{case.op}: the rejection was not counted"
        # Still alive and healthy: the next good version is applied, exactly.
        servicer.script(_notice(STREAMS[3, 0][0].manifest), [m.SerializeToString() for m in STREAMS[3, 0]])
        assert sub.wait_for_version(3, 10.0), f"{case.op}: the subscriber stopped applying versions"
        assert [v for v, _ in applied] in ([1, 3], [1, 2, 3])
        for version, tensors in applied:
            if version != 2:
                assert all(torch.equal(tensors[n], t) for n, t in VERSIONS_TRUTH[version].items()), version
    finally:
        sub.stop()
    return f"{case.op}: {'applied' if took else 'rejected'}"


def test_unparseable_first_message_is_counted(scripted):
    truncated_manifest = weights_pb2.WeightChunk(manifest=STREAMS[2, 0][0].manifest).SerializeToString()[:-3]
    messages = [truncated_manifest, *(m.SerializeToString() for m in STREAMS[2, 0][1:])]
    _check_subscriber(*scripted, Case("unparseable", messages, _notice(STREAMS[2, 0][0].manifest), "reject"))


@pytest.mark.parametrize(("shape", "words"), [
    ([2**31, 2**31], f"exceeds the limit of {codec.MAX_TENSOR_BYTES} bytes per tensor"),
    ([0, 2**63], f"exceeds the limit of {codec.MAX_TENSOR_BYTES} bytes per tensor"),
    ([1] * (codec.MAX_TENSOR_DIMS + 1),
     f"{codec.MAX_TENSOR_DIMS + 1} dims exceed the limit of {codec.MAX_TENSOR_DIMS}"),
], ids=["bytes", "dim", "dims"])
def test_manifest_over_the_tensor_limits_is_rejected_before_any_bytes(scripted, caplog, shape, words):
    meta = weights_pb2.TensorMeta(name="huge", dtype="float32", shape=shape, nbytes=_numel(shape) * 4 % 2**64,
                                  sha256=codec.sha256_hex(b""))
    messages = [weights_pb2.WeightChunk(manifest=weights_pb2.Manifest(version=2, tensors=[meta])),
                weights_pb2.WeightChunk(trailer=weights_pb2.Trailer(version=2))]
    before = _rejections("malformed")
    _check_subscriber(*scripted, Case("limit", messages, _rehash(messages), "reject"))
    assert _rejections("malformed") > before
    assert "tensor 'huge': " in caplog.text and words in caplog.text


@pytest.mark.parametrize(("tensor", "words"), [
    (torch.zeros(257), "shape [257] (1028 bytes) exceeds the limit of 1024 bytes per tensor"),
    (torch.zeros([1] * (codec.MAX_TENSOR_DIMS + 1)), f"exceed the limit of {codec.MAX_TENSOR_DIMS} dims"),
], ids=["bytes", "dims"])
def test_publisher_refuses_a_tensor_over_the_limits(monkeypatch, tensor, words):
    monkeypatch.setattr(codec, "MAX_TENSOR_BYTES", 1024)
    with pytest.raises(codec.CodecError, match=rf"tensor 'w': .*{re.escape(words)}"):
        WeightPublisher().publish({"w": tensor})
