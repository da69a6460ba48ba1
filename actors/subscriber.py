"""WeightSubscriber: keeps an actor's weights current from the learner's WeightService.

A daemon thread watches for new versions and pulls each newer one as a delta on the version it
holds: the publisher sends only tensors whose sha256 changed, the rest are taken from the held
tensors. Every tensor's length and sha256 and the manifest checksum are checked before the full
state dict goes to ``on_version``; a version that arrives corrupt is discarded and counted, never
partly applied. The intact tensors of a pull that broke off are kept, and the next pull of that
version asks only for the rest. After ``on_version`` returns, the subscriber reports the applied
version. When the server is unreachable or a stream breaks, it reconnects with exponential backoff."""

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass

import grpc
import torch
from prometheus_client import Counter

from fleetloop.protos import codec, weights_pb2, weights_pb2_grpc
from fleetloop.protos.security import TlsConfig, open_channel

logger = logging.getLogger(__name__)

REJECTED = Counter(
    "fleetloop_weights_rejected_total",
    "Pulled weight versions discarded before application, by reason.",
    ["reason"],
)

_MAX_REQUEST_BYTES = 1 << 20

OnVersion = Callable[[int, dict[str, torch.Tensor]], None]
"""Called as ``on_version(version, tensors)`` with a complete, verified state dict. The tensors are
shared with the subscriber's delta base: read them (e.g. ``load_state_dict``), never modify them in place."""


class RejectedVersion(Exception):
    """A pulled version was incomplete or corrupt; ``reason`` labels the rejection metric."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class WeightSubscriber:
    """Watches a WeightService and applies each newer weight version exactly once, whole.

    Args:
        target: Server address, e.g. ``"127.0.0.1:50051"``.
        subscriber_id: Stable name of this subscriber (e.g. the actor id).
        on_version: Receives each verified version; runs on the subscriber thread. It may be set
            later (the ``on_version`` attribute), by the component the subscriber is handed to, but
            before ``start``.
        known_version: Version the caller already has; only newer ones are pulled.
        timeout_s: Deadline of unary calls (ReportApplied).
        pull_timeout_s: Deadline of one whole PullVersion stream.
        max_message_bytes: Largest message accepted; must exceed the publisher's chunk size.
        backoff_initial_s: First reconnect delay; doubles per failure up to ``backoff_max_s``.
        backoff_max_s: Longest reconnect delay.
        tls: Connect over TLS (with a client certificate for mutual TLS); plaintext when None.
        token: Bearer token sent on every call, when the publisher requires one.
        promoted_only: Follow only the versions promoted for the fleet (a fleet member: env actors,
            robot bridges); False follows every published version (the evaluator).
    """

    def __init__(
        self,
        target: str,
        subscriber_id: str,
        on_version: OnVersion | None = None,
        known_version: int = 0,
        timeout_s: float = 10.0,
        pull_timeout_s: float = 300.0,
        max_message_bytes: int = 16 << 20,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
        tls: TlsConfig | None = None,
        token: str | None = None,
        promoted_only: bool = False,
    ):
        if not 0 < len(subscriber_id) <= codec.MAX_SUBSCRIBER_ID_CHARS:
            raise ValueError(f"subscriber_id must have 1 to {codec.MAX_SUBSCRIBER_ID_CHARS} characters, "
                             f"got {len(subscriber_id)}")
        if known_version < 0:
            raise ValueError(f"known_version must be >= 0, got {known_version}")
        if timeout_s <= 0 or pull_timeout_s <= 0:
            raise ValueError(f"timeouts must be > 0, got timeout_s={timeout_s}, pull_timeout_s={pull_timeout_s}")
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise ValueError(
                f"need 0 < backoff_initial_s <= backoff_max_s, got {backoff_initial_s}, {backoff_max_s}"
            )
        self.target = target
        self.subscriber_id = subscriber_id
        self.timeout_s = timeout_s
        self.pull_timeout_s = pull_timeout_s
        self.max_message_bytes = max_message_bytes
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.tls = tls
        self._token = token
        self.promoted_only = promoted_only
        self.on_version = on_version
        self._applied = known_version
        self._announced = known_version
        self._applied_cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._channel: grpc.Channel | None = None
        self._held: _Held | None = None
        self._partial: _Partial | None = None

    @property
    def applied_version(self) -> int:
        """Newest version passed to ``on_version`` (or ``known_version`` before that)."""
        return self._applied

    @property
    def latest_announced(self) -> int:
        """Newest version the server has announced (applied or not); ``latest_announced - applied_version``
        is how far behind this subscriber is."""
        return self._announced

    def start(self) -> None:
        """Connect and start the watch thread.

        Raises:
            RuntimeError: already started, or nothing receives the versions (``on_version`` unset).
        """
        if self._thread is not None:
            raise RuntimeError("WeightSubscriber already started")
        if self.on_version is None:
            raise RuntimeError("WeightSubscriber has no on_version: set it (the component that applies the weights "
                               "does) before start()")
        self._stop.clear()
        reconnect_ms = int(self.backoff_initial_s * 1000)
        self._channel = open_channel(
            self.target,
            tls=self.tls,
            token=self._token,
            options=[
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", _MAX_REQUEST_BYTES),
                ("grpc.initial_reconnect_backoff_ms", reconnect_ms),
                ("grpc.min_reconnect_backoff_ms", reconnect_ms),
                ("grpc.max_reconnect_backoff_ms", int(self.backoff_max_s * 1000)),
            ],
        )
        self._thread = threading.Thread(
            target=self._run, args=(weights_pb2_grpc.WeightServiceStub(self._channel),),
            name=f"weight-subscriber-{self.subscriber_id}", daemon=True,
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel open streams and wait up to ``timeout`` seconds for the thread to end."""
        if self._thread is None:
            return
        self._stop.set()
        self._channel.close()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("weight subscriber %r did not stop within %.1fs", self.subscriber_id, timeout)
        self._thread = None
        self._channel = None

    def wait_for_version(self, version: int, timeout: float | None = None) -> bool:
        """Block until ``applied_version >= version``; False if ``timeout`` seconds pass first."""
        with self._applied_cond:
            return self._applied_cond.wait_for(lambda: self._applied >= version, timeout)

    # ---- subscriber thread -------------------------------------------------------------------

    def _run(self, stub: weights_pb2_grpc.WeightServiceStub) -> None:
        backoff = self.backoff_initial_s
        while not self._stop.is_set():
            try:
                request = weights_pb2.WatchRequest(subscriber_id=self.subscriber_id, known_version=self._applied,
                                                   promoted_only=self.promoted_only)
                for notice in stub.WatchVersions(request):
                    backoff = self.backoff_initial_s
                    self._announced = max(self._announced, notice.version)
                    if notice.version > self._applied:
                        self._pull_and_apply(stub, notice)
                reason = "watch stream ended"
            except grpc.RpcError as exc:
                reason = f"{exc.code().name}: {exc.details()}"
            except RejectedVersion as exc:
                if not self._stop.is_set():
                    REJECTED.labels(reason=exc.reason).inc()
                reason = f"discarded a version ({exc.reason}): {exc}"
            except ValueError:  # "Cannot invoke RPC on closed channel": stop() closed it mid-call
                if self._stop.is_set():
                    break
                raise
            if self._stop.is_set():
                break
            delay = backoff * random.uniform(0.5, 1.0)
            logger.warning("weight subscriber %r: %s; retrying in %.2fs", self.subscriber_id, reason, delay)
            self._stop.wait(delay)
            backoff = min(backoff * 2, self.backoff_max_s)

    def _pull_and_apply(self, stub: weights_pb2_grpc.WeightServiceStub, notice: weights_pb2.VersionNotice) -> None:
        """Pull ``notice.version`` (as a delta on the held version, resuming an interrupted pull),
        verify it, apply it and report it.

        Raises:
            RejectedVersion: the version arrived incomplete or corrupt (nothing was applied); the
                intact tensors of a truncated pull are kept for the next attempt.
            grpc.RpcError: the pull failed before any data arrived.
        """
        version = notice.version
        partial = self._partial
        done = dict(partial.tensors) if partial and partial.key == (version, notice.manifest_sha256) else {}
        held = self._held
        request = weights_pb2.PullRequest(subscriber_id=self.subscriber_id, version=version,
                                          base_version=held.version if held else 0, have_tensors=sorted(done))
        call = stub.PullVersion(request, timeout=self.pull_timeout_s)
        try:
            metas, tensors = _assemble(call, notice, held, done)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.INTERNAL and "deserializ" in (exc.details() or ""):
                # The server answered with bytes that are not a WeightChunk: a corrupt version,
                # not a broken connection.
                self._partial = None
                raise RejectedVersion("malformed", f"version {version}: a message is not a WeightChunk") from exc
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            logger.info("weight subscriber %r: version %d already evicted, waiting for a newer one",
                        self.subscriber_id, version)
            return
        except RejectedVersion as exc:
            keep = exc.reason == "truncated" and done
            self._partial = _Partial((version, notice.manifest_sha256), done) if keep else None
            raise
        finally:
            call.cancel()
        self._partial = None
        try:
            self.on_version(version, dict(tensors))
        except Exception:
            logger.exception("weight subscriber %r: on_version(%d) failed; keeping version %d",
                             self.subscriber_id, version, self._applied)
            return
        self._held = _Held(version, {meta.name: meta for meta in metas}, tensors)
        with self._applied_cond:
            self._applied = version
            self._applied_cond.notify_all()
        logger.info("weight subscriber %r applied version %d", self.subscriber_id, version)
        self._report(stub, version)

    def _report(self, stub: weights_pb2_grpc.WeightServiceStub, version: int) -> None:
        report = weights_pb2.AppliedReport(
            subscriber_id=self.subscriber_id, version=version, applied_unix_ms=time.time_ns() // 1_000_000
        )
        try:
            stub.ReportApplied(report, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            logger.warning("weight subscriber %r: report of version %d failed: %s",
                           self.subscriber_id, version, exc.code().name)


def _assemble(
    stream: Iterable[weights_pb2.WeightChunk],
    notice: weights_pb2.VersionNotice,
    held: "_Held | None",
    done: dict[int, torch.Tensor],
) -> tuple[list[weights_pb2.TensorMeta], dict[str, torch.Tensor]]:
    """Collect one PullVersion stream into the version's metadata and full tensors, verifying it.

    Tensors marked ``from_base`` come from ``held``, ``resumed`` ones from ``done``; every tensor that
    arrives whole and matches its sha256 is added to ``done`` (index -> tensor) at once, so a caller
    can resume a truncated pull.

    Raises:
        RejectedVersion: anything is missing, out of order, mis-sized or fails a checksum, or the
            stream broke off after the manifest.
        grpc.RpcError: the stream failed before the manifest arrived.
    """
    version = notice.version
    messages = iter(stream)
    first = next(messages, None)
    if first is None or first.WhichOneof("kind") != "manifest":
        raise RejectedVersion("malformed", f"version {version}: stream did not start with a manifest")
    manifest = first.manifest
    metas = list(manifest.tensors)
    if manifest.version != version:
        raise RejectedVersion("malformed", f"asked for version {version}, got a manifest of {manifest.version}")
    if len({meta.name for meta in metas}) != len(metas):
        raise RejectedVersion("malformed", f"version {version}: manifest repeats a tensor name")
    digest = codec.manifest_sha256(manifest.version, metas)
    if digest != notice.manifest_sha256:
        raise RejectedVersion("checksum", f"version {version}: manifest sha256 {digest} does not match the notice")
    try:
        sizes = [codec.expected_nbytes(meta) for meta in metas]
    except codec.CodecError as exc:
        raise RejectedVersion("malformed", f"version {version}: {exc}") from exc
    if sum(sizes) != manifest.total_bytes:
        raise RejectedVersion("size", f"version {version}: tensor sizes do not add up to total_bytes")
    _take_unsent(manifest, metas, held, done)

    parts: dict[int, list[bytes]] = {}
    filled = [0] * len(metas)
    trailer = None
    pending: dict[int, futures.Future] = {}
    # Tensors are joined and checksummed on a second thread (hashlib releases the GIL) while chunks arrive.
    with futures.ThreadPoolExecutor(1, thread_name_prefix="weight-verify") as verifier:
        try:
            for message in messages:
                kind = message.WhichOneof("kind")
                if trailer is not None or kind == "manifest":
                    raise RejectedVersion("malformed", f"version {version}: unexpected {kind} message")
                if kind == "trailer":
                    trailer = message.trailer
                    continue
                chunk = message.tensor_chunk
                index, data = chunk.tensor_index, chunk.data
                end = chunk.offset + len(data)
                if index >= len(metas) or index in done or index in pending:
                    raise RejectedVersion("malformed", f"version {version}: unexpected chunk for tensor {index}")
                name = metas[index].name
                if chunk.offset != filled[index]:
                    raise RejectedVersion("size", f"tensor {name!r}: chunk at byte {chunk.offset}, expected {filled[index]}")
                if end > sizes[index]:
                    raise RejectedVersion("size", f"tensor {name!r}: chunk ends at byte {end}, past nbytes {sizes[index]}")
                parts.setdefault(index, []).append(data)
                filled[index] = end
                if end == sizes[index]:
                    pending[index] = verifier.submit(_decode, metas[index], parts.pop(index))
        except grpc.RpcError as exc:
            raise RejectedVersion("truncated", f"version {version}: stream broke off ({exc.code().name})") from exc
        finally:
            for index, verified in pending.items():
                done[index] = verified.result()
    if trailer is None:
        raise RejectedVersion("truncated", f"version {version}: stream ended without a trailer")
    if trailer.version != version or trailer.manifest_sha256 != digest:
        raise RejectedVersion("checksum", f"version {version}: trailer does not match the manifest")
    for index, (meta, size) in enumerate(zip(metas, sizes)):
        if index not in done:
            if filled[index] != size:
                raise RejectedVersion("truncated", f"tensor {meta.name!r}: got {filled[index]} of {size} bytes")
            done[index] = _decode(meta, [])
    return metas, {meta.name: done[index] for index, meta in enumerate(metas)}


def _take_unsent(
    manifest: weights_pb2.Manifest, metas: list[weights_pb2.TensorMeta], held: "_Held | None",
    done: dict[int, torch.Tensor],
) -> None:
    """Put the tensors the manifest marks as not sent into ``done``: ``from_base`` ones from ``held``
    (which must be that base and hold identical metadata), ``resumed`` ones must be in ``done``.

    Raises:
        RejectedVersion: a tensor marked as not sent is not available here.
    """
    for index in manifest.from_base:
        meta = metas[index] if index < len(metas) else None
        if meta is None or held is None or held.version != manifest.base_version or held.metas.get(meta.name) != meta:
            raise RejectedVersion("malformed", f"version {manifest.version}: tensor {index} marked unchanged since "
                                               f"version {manifest.base_version}, which this subscriber does not hold")
        done[index] = held.tensors[meta.name]
    missing = [index for index in manifest.resumed if index not in done]
    if missing:
        raise RejectedVersion("malformed", f"version {manifest.version}: tensors {missing} marked resumed are not held")


def _decode(meta: weights_pb2.TensorMeta, parts: list[bytes]) -> torch.Tensor:
    """Join a tensor's chunks and decode them, checking length and sha256."""
    try:
        return codec.decode_tensor(meta, bytearray().join(parts))
    except codec.CodecError as exc:
        raise RejectedVersion("checksum", str(exc)) from exc


@dataclass(frozen=True)
class _Held:
    """The last applied full version: the base of delta pulls."""

    version: int
    metas: dict[str, weights_pb2.TensorMeta]
    tensors: dict[str, torch.Tensor]


@dataclass(frozen=True)
class _Partial:
    """Intact tensors of an interrupted pull, keyed by (version, manifest sha256)."""

    key: tuple[int, str]
    tensors: dict[int, torch.Tensor]
