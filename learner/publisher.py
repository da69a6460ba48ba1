"""WeightPublisher: serves versioned weights to subscribers over the gRPC WeightService.

The learner calls ``publish(state_dict)``; the publisher snapshots the tensors into a
*PublishedVersion* (metadata with per-tensor sha256, the tensor chunks serialized once for all
subscribers, manifest checksum), keeps the newest few, and wakes the watch streams. Serving,
chunking and slow subscribers never hold up ``publish``: it only swaps in the new version under a
lock and notifies. A pull against a held base version sends only tensors whose checksum changed,
and skips tensors a resuming subscriber already holds. Subscribers report the version they
applied, which feeds the subscriber count and the propagation histogram.

A version *promoted* is one the fleet may run. By default every version is promoted as it is
published. A publisher built with ``auto_promote=False`` promotes only on ``promote(version)``
(the loop's evaluator gate, ``weights.promotion: evaluated``): watchers that ask for promoted
versions only (the fleet) are told of those, the others (the evaluator) of every version. The
promoted version and the versions a ``hold`` pins (one and every newer one: an evaluator may
take a newer version than it was asked for) stay pullable beyond ``keep_versions``.

Requests refused by a handler (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED) are counted in
``fleetloop_weights_requests_rejected_total{reason}``. The server also answers gRPC health checks
and, when configured, requires TLS and a bearer token (``protos/security.py``)."""

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import NoReturn

import grpc
import torch
from grpc_health.v1 import health
from prometheus_client import Counter, Gauge, Histogram

from fleetloop.protos import codec, weights_pb2, weights_pb2_grpc
from fleetloop.protos.codec import MAX_SUBSCRIBER_ID_CHARS
from fleetloop.protos.security import TlsConfig, TokenAuthInterceptor, address, start_server

logger = logging.getLogger(__name__)

VERSION_PUBLISHED = Gauge("fleetloop_weights_version_published", "Latest published weights version.")
VERSION_PROMOTED = Gauge("fleetloop_weights_version_promoted",
                         "Latest weights version promoted for the fleet (every published one unless the fleet "
                         "runs evaluated versions only: weights.promotion).")
PROMOTIONS_MISSED = Counter("fleetloop_weights_promotions_missed_total",
                            "Promotions refused because the version was no longer held (raise weights.keep_versions).")
PUBLISH_SECONDS = Histogram(
    "fleetloop_weights_publish_seconds", "Time to snapshot and swap in a weights version.",
    buckets=(0.001, 0.005, 0.02, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BYTES_SENT = Counter("fleetloop_weights_bytes_sent_total", "Tensor bytes streamed to subscribers.")
SUBSCRIBERS = Gauge(
    "fleetloop_weights_subscribers", "Subscribers that reported an applied version within the activity window."
)
PROPAGATION_SECONDS = Histogram(
    "fleetloop_weights_propagation_seconds",
    "Time from publish to a subscriber's applied report, measured on the publisher's clock.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
REQUESTS_REJECTED = Counter(
    "fleetloop_weights_requests_rejected_total",
    "WeightService requests refused by a handler, by reason: invalid_argument, version_not_held, watch_limit.",
    ["reason"],
)

SERVICE_NAME = weights_pb2.DESCRIPTOR.services_by_name["WeightService"].full_name
HEALTH_SERVICES = ("", SERVICE_NAME)
"""Names the health service reports SERVING while the publisher runs ("" is the whole server)."""

METRICS_SERVICE = "weights"
"""The ``service`` label of this server's gRPC metrics (``protos/security.py``)."""

SUBSCRIBER_ACTIVE_SECONDS = 60.0
"""A subscriber counts as active if it reported within this window."""
MAX_SUBSCRIBERS = 4096
"""Subscribers whose applied version is remembered; a report from a new one beyond this forgets the
subscriber whose last report is oldest (it is counted again once it reports)."""

_MAX_REQUEST_BYTES = 1 << 20
_MESSAGE_OVERHEAD_BYTES = 1 << 16


@dataclass(frozen=True)
class PublishedVersion:
    """One immutable published state dict."""

    version: int
    tensors: list[weights_pb2.TensorMeta]
    chunks: list[list[bytes]]
    """Per tensor, its serialized WeightChunk messages: encoded once, streamed to every subscriber."""
    total_bytes: int
    manifest_sha256: str
    published_unix_ms: int
    published_monotonic: float

    def notice(self) -> weights_pb2.VersionNotice:
        return weights_pb2.VersionNotice(
            version=self.version,
            num_tensors=len(self.tensors),
            total_bytes=self.total_bytes,
            manifest_sha256=self.manifest_sha256,
            published_unix_ms=self.published_unix_ms,
        )


def _reject(context: grpc.ServicerContext, code: grpc.StatusCode, reason: str, details: str) -> NoReturn:
    """Count the refusal under ``reason`` and end the call with ``code``."""
    REQUESTS_REJECTED.labels(reason).inc()
    context.abort(code, details)


def _check_subscriber_id(subscriber_id: str, context: grpc.ServicerContext) -> None:
    """Refuse an id over MAX_SUBSCRIBER_ID_CHARS with INVALID_ARGUMENT."""
    if len(subscriber_id) > MAX_SUBSCRIBER_ID_CHARS:
        _reject(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid_argument",
                f"subscriber_id of {len(subscriber_id)} characters exceeds the limit of {MAX_SUBSCRIBER_ID_CHARS}")


class WeightServicer(weights_pb2_grpc.WeightServiceServicer):
    """gRPC handlers of WeightService, reading versions from a WeightPublisher."""

    def __init__(self, publisher: "WeightPublisher"):
        self._publisher = publisher

    def WatchVersions(self, request: weights_pb2.WatchRequest, context: grpc.ServicerContext):
        _check_subscriber_id(request.subscriber_id, context)
        pub = self._publisher
        if not pub._acquire_watch_slot():
            _reject(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "watch_limit",
                    f"watch limit of {pub.max_watchers} concurrent streams reached; retry later")
        try:
            context.add_callback(pub._wake_watchers)
            known = request.known_version
            logger.debug("subscriber %r watching from version %d", request.subscriber_id, known)
            while True:
                snapshot = pub._wait_newer_than(known, context, request.promoted_only)
                if snapshot is None:
                    return
                known = snapshot.version
                yield snapshot.notice()
        finally:
            pub._release_watch_slot()

    def PullVersion(self, request: weights_pb2.PullRequest, context: grpc.ServicerContext):
        _check_subscriber_id(request.subscriber_id, context)
        snapshot = self._publisher._lookup(request.version)
        if snapshot is None:
            held = self._publisher.held_versions()
            what = "latest version" if request.version == 0 else f"version {request.version}"
            _reject(context, grpc.StatusCode.NOT_FOUND, "version_not_held",
                    f"{what} is not held by the weight publisher (held versions: {held or 'none'})")
        base = self._publisher._lookup(request.base_version) if request.base_version else None
        if base is not None and base.version >= snapshot.version:
            base = None
        # have_tensors: at most ~1M indices within _MAX_REQUEST_BYTES; the manifest keeps one per tensor
        resumed = sorted({i for i in request.have_tensors if i < len(snapshot.tensors)})
        logger.debug("subscriber %r pulling version %d (base %s, resuming %d tensors)", request.subscriber_id,
                     snapshot.version, base.version if base else "none", len(resumed))
        yield from _chunks(snapshot, base, resumed)

    def ReportApplied(self, request: weights_pb2.AppliedReport, context: grpc.ServicerContext):
        _check_subscriber_id(request.subscriber_id, context)
        if not request.subscriber_id or request.version == 0:
            _reject(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid_argument",
                    "subscriber_id and a version >= 1 are required")
        latest = self._publisher.latest_version
        if request.version > latest:
            _reject(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid_argument",
                    f"version {request.version} was never published (latest: {latest})")
        self._publisher._record_applied(request.subscriber_id, request.version)
        return weights_pb2.Ack()


def unchanged_tensors(snapshot: PublishedVersion, base: PublishedVersion) -> list[int]:
    """Indices of ``snapshot``'s tensors that ``base`` holds with the same name, dtype, shape and sha256."""
    held = {meta.name: meta for meta in base.tensors}
    return [index for index, meta in enumerate(snapshot.tensors) if held.get(meta.name) == meta]


def _chunks(
    snapshot: PublishedVersion, base: PublishedVersion | None, resumed: list[int]
) -> Iterator[weights_pb2.WeightChunk | bytes]:
    """Manifest, then the pre-serialized chunks of each tensor neither unchanged since ``base`` nor
    ``resumed``, then the trailer."""
    from_base = unchanged_tensors(snapshot, base) if base is not None else []
    yield weights_pb2.WeightChunk(
        manifest=weights_pb2.Manifest(
            version=snapshot.version, tensors=snapshot.tensors, total_bytes=snapshot.total_bytes,
            base_version=base.version if base is not None else 0, from_base=from_base, resumed=resumed,
        )
    )
    skipped = set(from_base) | set(resumed)
    for index, (meta, chunks) in enumerate(zip(snapshot.tensors, snapshot.chunks)):
        if index not in skipped:
            yield from chunks
            BYTES_SENT.inc(meta.nbytes)
    yield weights_pb2.WeightChunk(
        trailer=weights_pb2.Trailer(version=snapshot.version, manifest_sha256=snapshot.manifest_sha256)
    )


def _serialize(message: weights_pb2.WeightChunk | bytes) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


def add_servicer_to_server(servicer: WeightServicer, server: grpc.Server) -> None:
    """Register ``servicer`` like the generated ``add_WeightServiceServicer_to_server``, except that
    PullVersion may also yield WeightChunk messages serialized in advance."""
    handlers = {
        "WatchVersions": grpc.unary_stream_rpc_method_handler(
            servicer.WatchVersions, request_deserializer=weights_pb2.WatchRequest.FromString,
            response_serializer=weights_pb2.VersionNotice.SerializeToString),
        "PullVersion": grpc.unary_stream_rpc_method_handler(
            servicer.PullVersion, request_deserializer=weights_pb2.PullRequest.FromString,
            response_serializer=_serialize),
        "ReportApplied": grpc.unary_unary_rpc_method_handler(
            servicer.ReportApplied, request_deserializer=weights_pb2.AppliedReport.FromString,
            response_serializer=weights_pb2.Ack.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class WeightPublisher:
    """Holds the newest published weight versions and serves them over gRPC.

    Args:
        host: Interface to bind.
        port: Port to bind; 0 picks a free one (see ``start``'s return value).
        chunk_bytes: Largest tensor slice per streamed message.
        keep_versions: Versions held for pulling; older ones answer NOT_FOUND.
        max_message_bytes: Largest message the server sends; must exceed ``chunk_bytes``.
        max_watchers: Concurrent watch streams served; each holds one worker thread.
        pull_workers: Extra worker threads for pulls, reports and health checks, so watchers cannot starve them.
        tls: Serve over TLS (mutual when ``tls.require_client_auth``); plaintext when None.
        token: Bearer token every WeightService call must carry; none required when None.
        auto_promote: Promote every version as it is published; False: only ``promote`` does.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        chunk_bytes: int = 1 << 20,
        keep_versions: int = 2,
        max_message_bytes: int = 4 << 20,
        max_watchers: int = 64,
        pull_workers: int = 16,
        tls: TlsConfig | None = None,
        token: str | None = None,
        auto_promote: bool = True,
    ):
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be >= 1, got {keep_versions}")
        if max_message_bytes < chunk_bytes + _MESSAGE_OVERHEAD_BYTES:
            raise ValueError(
                f"max_message_bytes ({max_message_bytes}) must be at least chunk_bytes ({chunk_bytes}) "
                f"+ {_MESSAGE_OVERHEAD_BYTES} bytes of overhead"
            )
        if max_watchers < 1 or pull_workers < 1:
            raise ValueError(f"max_watchers and pull_workers must be >= 1, got {max_watchers}, {pull_workers}")
        self.host = host
        self.port = port
        self.chunk_bytes = chunk_bytes
        self.keep_versions = keep_versions
        self.max_message_bytes = max_message_bytes
        self.max_watchers = max_watchers
        self.pull_workers = pull_workers
        self.tls = tls
        self.auto_promote = auto_promote
        self._interceptors = [TokenAuthInterceptor(token, METRICS_SERVICE)] if token else []
        if tls is not None:
            tls.server_credentials()  # fail here, not at start, on incomplete TLS material
        self._health: health.HealthServicer | None = None
        self._cond = threading.Condition()
        self._versions: OrderedDict[int, PublishedVersion] = OrderedDict()
        self._latest: PublishedVersion | None = None
        self._promoted: PublishedVersion | None = None
        self._held: set[int] = set()
        self._watchers = 0
        self._stopping = False
        # subscriber -> (highest applied version, monotonic time of its last report), oldest report first
        self._applied: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._server: grpc.Server | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> int:
        """Start serving and return the bound port.

        Raises:
            OSError: the address cannot be bound (e.g. the port is in use).
            RuntimeError: already started.
        """
        if self._server is not None:
            raise RuntimeError("WeightPublisher already started")
        with self._cond:
            self._stopping = False
        self._server, self._health, bound = start_server(
            "weight service", self.host, self.port, service=METRICS_SERVICE,
            workers=self.max_watchers + self.pull_workers,
            max_send_bytes=self.max_message_bytes, max_receive_bytes=_MAX_REQUEST_BYTES,
            add_servicers=lambda server: add_servicer_to_server(WeightServicer(self), server),
            health_services=HEALTH_SERVICES, interceptors=self._interceptors, tls=self.tls,
            token_required=bool(self._interceptors))
        self.port = bound
        SUBSCRIBERS.set_function(self.active_subscribers)
        return bound

    def stop(self, grace: float | None = 1.0) -> None:
        """End watch streams, stop serving (in-flight pulls get ``grace`` seconds) and wait."""
        if self._server is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._health.enter_graceful_shutdown()
        self._server.stop(grace).wait()
        self._server = None
        logger.info("weight service on %s stopped", address(self.host, self.port))

    # ---- publishing ------------------------------------------------------------------------

    def publish(self, state_dict: Mapping[str, torch.Tensor], version: int | None = None) -> int:
        """Snapshot ``state_dict`` as a new version and notify watchers.

        Args:
            state_dict: Tensors by name; copied to CPU bytes now, so later changes do not leak in.
            version: Explicit version number; default latest + 1 (the first is 1).

        Returns:
            The published version.

        Raises:
            ValueError: ``version`` is below 1 or not above the latest published version.
            fleetloop.protos.codec.CodecError: a tensor cannot be encoded.
        """
        started = time.perf_counter()
        self._check_version(version)
        tensors, blobs = codec.encode_state_dict(state_dict)
        chunks = [codec.encode_chunks(index, blob, self.chunk_bytes) for index, blob in enumerate(blobs)]
        with self._cond:
            self._check_version(version)
            number = version if version is not None else self.latest_version + 1
            snapshot = PublishedVersion(
                version=number,
                tensors=tensors,
                chunks=chunks,
                total_bytes=sum(meta.nbytes for meta in tensors),
                manifest_sha256=codec.manifest_sha256(number, tensors),
                published_unix_ms=time.time_ns() // 1_000_000,
                published_monotonic=time.monotonic(),
            )
            self._versions[number] = snapshot
            self._latest = snapshot
            if self.auto_promote:
                self._promoted = snapshot
            self._evict()
            self._cond.notify_all()
        VERSION_PUBLISHED.set(number)
        if self.auto_promote:
            VERSION_PROMOTED.set(number)
        PUBLISH_SECONDS.observe(time.perf_counter() - started)
        logger.info(
            "published weights version %d (%d tensors, %d bytes)", number, len(tensors), snapshot.total_bytes
        )
        return number

    def promote(self, version: int) -> bool:
        """Let the fleet run ``version``: watchers of promoted versions are told of it. False (and
        counted) when it is no longer held: evicted before its evaluation finished.

        Raises:
            ValueError: ``version`` was never published, or is older than the promoted one
                (promotions only move forward, like versions).
        """
        with self._cond:
            if not 1 <= version <= self.latest_version:
                raise ValueError(f"version {version} was never published (latest: {self.latest_version})")
            if version < self.promoted_version:
                raise ValueError(f"version {version} is older than the promoted version {self.promoted_version}; "
                                 "promotions only move forward")
            snapshot = self._versions.get(version)
            if snapshot is None:
                PROMOTIONS_MISSED.inc()
                logger.warning("version %d cannot be promoted: no longer held (held: %s); raise weights.keep_versions",
                               version, list(self._versions))
                return False
            self._promoted = snapshot
            self._evict()
            self._cond.notify_all()
        VERSION_PROMOTED.set(version)
        logger.info("promoted weights version %d for the fleet", version)
        return True

    def hold(self, version: int) -> bool:
        """Keep ``version`` and every newer version pullable beyond ``keep_versions`` until
        ``release(version)`` (while the evaluator evaluates it, or a newer one it received first,
        for promotion); False if ``version`` is no longer held."""
        with self._cond:
            if version not in self._versions:
                return False
            self._held.add(version)
            return True

    def release(self, version: int) -> None:
        """Undo ``hold``; the version goes once ``keep_versions`` newer ones exist."""
        with self._cond:
            self._held.discard(version)
            self._evict()

    def _evict(self) -> None:
        """Keep the newest ``keep_versions`` versions, the promoted one and the held ones (under the lock)."""
        held_from = min(self._held, default=None)
        kept = set(list(self._versions)[-self.keep_versions:]) | {self.promoted_version}
        for version in [v for v in self._versions if v not in kept and (held_from is None or v < held_from)]:
            del self._versions[version]

    @property
    def promoted_version(self) -> int:
        """Newest version promoted for the fleet; 0 before the first."""
        snapshot = self._promoted
        return snapshot.version if snapshot is not None else 0

    def _check_version(self, version: int | None) -> None:
        if version is None:
            return
        if version < 1:
            raise ValueError(f"version must be >= 1, got {version}")
        latest = self.latest_version
        if version <= latest:
            raise ValueError(f"version must increase: got {version}, latest published is {latest}")

    @property
    def latest_version(self) -> int:
        """Newest published version; 0 before the first publish."""
        snapshot = self._latest
        return snapshot.version if snapshot is not None else 0

    def held_versions(self) -> list[int]:
        """Versions that can still be pulled, oldest first."""
        with self._cond:
            return list(self._versions)

    # ---- subscriber reports ----------------------------------------------------------------

    def applied_versions(self) -> dict[str, int]:
        """Last version each subscriber reported as applied."""
        with self._cond:
            return {subscriber: version for subscriber, (version, _) in self._applied.items()}

    def active_subscribers(self) -> int:
        """Subscribers that reported within ``SUBSCRIBER_ACTIVE_SECONDS``."""
        cutoff = time.monotonic() - SUBSCRIBER_ACTIVE_SECONDS
        with self._cond:
            return sum(1 for _, seen in self._applied.values() if seen >= cutoff)

    def _record_applied(self, subscriber_id: str, version: int) -> None:
        """Remember the report, forgetting the oldest reporter beyond MAX_SUBSCRIBERS."""
        now = time.monotonic()
        with self._cond:
            previous = self._applied.get(subscriber_id, (0, 0.0))[0]
            self._applied[subscriber_id] = (max(previous, version), now)
            self._applied.move_to_end(subscriber_id)
            if len(self._applied) > MAX_SUBSCRIBERS:
                self._applied.popitem(last=False)
            snapshot = self._versions.get(version)
        if snapshot is not None and version > previous:
            PROPAGATION_SECONDS.observe(now - snapshot.published_monotonic)
        logger.debug("subscriber %r applied version %d", subscriber_id, version)

    # ---- used by WeightServicer ------------------------------------------------------------

    def _lookup(self, version: int) -> PublishedVersion | None:
        with self._cond:
            return self._latest if version == 0 else self._versions.get(version)

    def _wait_newer_than(self, known: int, context: grpc.ServicerContext,
                         promoted_only: bool = False) -> PublishedVersion | None:
        """Block until a version above ``known`` exists (a promoted one with ``promoted_only``); None
        once the stream or server ends."""

        def newest() -> PublishedVersion | None:
            return self._promoted if promoted_only else self._latest

        def ready() -> bool:
            snapshot = newest()
            return self._stopping or not context.is_active() or (snapshot is not None and snapshot.version > known)

        with self._cond:
            self._cond.wait_for(ready)
            if self._stopping or not context.is_active():
                return None
            return newest()

    def _wake_watchers(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _acquire_watch_slot(self) -> bool:
        with self._cond:
            if self._watchers >= self.max_watchers:
                return False
            self._watchers += 1
            return True

    def _release_watch_slot(self) -> None:
        with self._cond:
            self._watchers -= 1
