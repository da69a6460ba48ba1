"""RobotBridgeServer: serves a ``RobotBackend`` as the gRPC RobotService.

Every chunk is decoded and checked whole (``check_chunk``) before the backend executes any of it;
a ``RobotError`` becomes the gRPC status it names, with its message as details, and is counted in
``fleetloop_bridge_rejected_total{reason}``. The server also answers gRPC health checks, limits
message sizes (larger requests get RESOURCE_EXHAUSTED from gRPC itself), keeps connections alive,
and, when configured, requires TLS and a bearer token (``protos/security.py``), exactly as the
WeightService does. Every call is counted by method and final status code.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc
from grpc_health.v1 import health

from fleetloop.actors.bridge import wire
from fleetloop.actors.bridge.backend import RobotBackend, RobotError, check_chunk, check_robot
from fleetloop.actors.bridge import metrics as bridge_metrics
from fleetloop.actors.bridge.metrics import ACT_SECONDS, REJECTED, REQUESTS
from fleetloop.protos import robot_pb2, robot_pb2_grpc
from fleetloop.protos.security import TlsConfig, TokenAuthInterceptor, start_server
from fleetloop.protos.security import address as grpc_address

logger = logging.getLogger(__name__)

SERVICE_NAME = robot_pb2.DESCRIPTOR.services_by_name["RobotService"].full_name
HEALTH_SERVICES = ("", SERVICE_NAME)
"""Names the health service reports SERVING while the bridge runs ("" is the whole server)."""
METRICS_SERVICE = "robot"
"""The ``service`` label of this server's gRPC metrics (``protos/security.py``)."""

MAX_DETAILS_CHARS = 1024
"""Refusal details may echo what the client sent (a robot or episode id); longer ones are cut so
the status always fits the client's metadata limit and arrives with its code and reason."""


def _abort(context: grpc.ServicerContext, error: RobotError) -> None:
    REJECTED.labels(reason=error.reason).inc()
    context.set_trailing_metadata(((wire.REASON_METADATA, error.reason),))
    details = str(error)
    if len(details) > MAX_DETAILS_CHARS:
        details = details[:MAX_DETAILS_CHARS] + f"... ({len(details)} characters)"
    context.abort(grpc.StatusCode[error.status], details)


class RobotServicer(robot_pb2_grpc.RobotServiceServicer):
    """gRPC handlers of RobotService over a backend."""

    def __init__(self, backend: RobotBackend, max_streams: int):
        self._backend = backend
        self._info = backend.info()
        self._streams = threading.BoundedSemaphore(max_streams)
        self.max_streams = max_streams

    def GetInfo(self, request, context):
        return wire.info_to_proto(self._info)

    def Reset(self, request, context):
        try:
            seed = request.seed if request.HasField("seed") else None
            episode_id, observations = self._backend.reset(seed, dict(request.options), request.want_image)
        except RobotError as error:
            _abort(context, error)
        return robot_pb2.ResetResponse(episode_id=episode_id, observations=[
            wire.observation_to_proto(observations[robot], request.image_encoding) for robot in self._info.robot_ids])

    def Observe(self, request, context):
        try:
            check_robot(self._info, request.robot_id)
            observation = self._backend.observe(request.robot_id, request.want_image)
        except RobotError as error:
            _abort(context, error)
        return wire.observation_to_proto(observation, request.image_encoding)

    def Act(self, request, context):
        started = time.perf_counter()
        try:
            check_robot(self._info, request.robot_id)
            actions = wire.decode_chunk(request)
            check_chunk(self._info, actions, request.execute_steps)
            result = self._backend.act(request.robot_id, request.episode_id, request.step, actions,
                                       request.execute_steps, request.want_image)
        except RobotError as error:
            _abort(context, error)
        ACT_SECONDS.observe(time.perf_counter() - started)
        return wire.act_result_to_proto(result, request.image_encoding)

    def StreamInterventions(self, request, context):
        try:
            for robot in request.robot_ids:
                check_robot(self._info, robot)
        except RobotError as error:
            _abort(context, error)
        if not self._streams.acquire(blocking=False):
            REJECTED.labels(reason="stream_limit").inc()
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"limit of {self.max_streams} concurrent intervention streams reached; retry later")
        subscription = self._backend.feed.subscribe(request.robot_ids or self._info.robot_ids)
        try:
            if not context.add_callback(subscription.close):
                return
            yield robot_pb2.Intervention(subscribed=True)
            while (item := subscription.get()) is not None:
                yield wire.intervention_to_proto(item)
        finally:
            subscription.close()
            self._streams.release()


class _MetricsInterceptor(grpc.ServerInterceptor):
    """Counts every call by method and final status code (rejected tokens included: it runs
    outside the token check, and counts UNAUTHENTICATED as rejected reason ``unauthenticated``)."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or not (handler.unary_unary or handler.unary_stream):
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]

        def record(context: grpc.ServicerContext, failed: bool) -> None:
            code = context.code()
            if code is None:
                code = grpc.StatusCode.UNKNOWN if failed else (
                    grpc.StatusCode.OK if context.is_active() else grpc.StatusCode.CANCELLED)
            REQUESTS.labels(method=method, code=code.name).inc()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                REJECTED.labels(reason="unauthenticated").inc()

        if handler.unary_unary:
            behaviour = handler.unary_unary

            def unary(request, context):
                failed = False
                try:
                    return behaviour(request, context)
                except Exception:
                    failed = True
                    raise
                finally:
                    record(context, failed)

            return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=handler.request_deserializer,
                                                       response_serializer=handler.response_serializer)
        behaviour = handler.unary_stream

        def stream(request, context):
            failed = False
            try:
                yield from behaviour(request, context)
            except Exception:
                failed = True
                raise
            finally:
                record(context, failed)

        return grpc.unary_stream_rpc_method_handler(stream, request_deserializer=handler.request_deserializer,
                                                    response_serializer=handler.response_serializer)


class RobotBridgeServer:
    """Serves ``backend`` over gRPC.

    Args:
        backend: The robot (twin or hardware); the server owns it and closes it in ``stop``.
        host: Interface to bind.
        port: Port to bind; 0 picks a free one (see ``start``'s return value).
        max_message_bytes: Largest message received or sent (requests above it get RESOURCE_EXHAUSTED).
        max_streams: Concurrent StreamInterventions calls; each holds one worker thread.
        workers: Worker threads for the unary calls and health checks, beside the stream workers.
        tls: Serve over TLS (mutual when ``tls.require_client_auth``); plaintext when None.
        token: Bearer token every RobotService call must carry; none required when None.
    """

    def __init__(self, backend: RobotBackend, host: str = "127.0.0.1", port: int = 0,
                 max_message_bytes: int = 4 << 20, max_streams: int = 8, workers: int = 8,
                 tls: TlsConfig | None = None, token: str | None = None):
        if max_message_bytes < 1024 or max_streams < 1 or workers < 1:
            raise ValueError(f"need max_message_bytes >= 1024, max_streams >= 1 and workers >= 1, got "
                             f"{max_message_bytes}, {max_streams}, {workers}")
        if tls is not None:
            tls.server_credentials()  # fail here, not at start, on incomplete TLS material
        self.backend = backend
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.max_streams = max_streams
        self.workers = workers
        self.tls = tls
        self._interceptors = [_MetricsInterceptor(), *([TokenAuthInterceptor(token, METRICS_SERVICE)] if token else [])]
        self._server: grpc.Server | None = None
        self._backend_closed = False
        self._health: health.HealthServicer | None = None

    @property
    def address(self) -> str:
        """``host:port`` the bridge listens on (the bound port once started)."""
        return grpc_address(self.host, self.port)

    def start(self) -> int:
        """Start serving and return the bound port.

        Raises:
            OSError: the address cannot be bound (e.g. the port is in use).
            RuntimeError: already started, or stopped (a stopped server has closed its backend).
        """
        if self._server is not None or self._backend_closed:
            raise RuntimeError("RobotBridgeServer already started or stopped")
        bridge_metrics.register()
        self._server, self._health, self.port = start_server(
            "robot bridge", self.host, self.port, service=METRICS_SERVICE, workers=self.max_streams + self.workers,
            max_send_bytes=self.max_message_bytes, max_receive_bytes=self.max_message_bytes,
            add_servicers=lambda server: robot_pb2_grpc.add_RobotServiceServicer_to_server(
                RobotServicer(self.backend, self.max_streams), server),
            health_services=HEALTH_SERVICES, interceptors=self._interceptors, tls=self.tls,
            token_required=len(self._interceptors) > 1)
        info = self.backend.info()
        logger.info("robot bridge %s serves %d robot(s) of %s", self.address, len(info.robot_ids), info.backend)
        return self.port

    def stop(self, grace: float | None = 1.0) -> None:
        """Report NOT_SERVING, end intervention streams, stop serving (in-flight calls get ``grace``
        seconds), then close the backend, also when the server never started. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            self._health.enter_graceful_shutdown()
            self.backend.feed.close()
            server.stop(grace).wait()
            logger.info("robot bridge on %s stopped", self.address)
        if not self._backend_closed:
            self._backend_closed = True
            self.backend.close()
