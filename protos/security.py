"""gRPC set-up shared by our services (WeightService, RobotService) and their clients: TLS,
bearer tokens, keep-alives, health checking.

``TlsConfig`` holds PEM bytes and builds server or channel credentials (mutual TLS when the
server requires client certificates). A bearer token travels as ``authorization: Bearer <token>``
metadata on every call: ``TokenAuthInterceptor`` rejects a missing or wrong one with
UNAUTHENTICATED and counts it; ``open_channel`` adds it on the client side. The gRPC health
service is exempt, so probes need no token. ``start_server`` builds, binds and starts a server
with the health service, counting requests that do not parse (``UndecodableRequestInterceptor``);
``open_channel`` opens a client channel; both set keep-alives.
"""

import hmac
import logging
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import Counter

from fleetloop.limits import read_limited

logger = logging.getLogger(__name__)

AUTH_FAILURES = Counter(
    "fleetloop_grpc_auth_failures_total", "gRPC calls rejected for a missing or wrong bearer token, by service.",
    ["service"],
)
UNDECODABLE_REQUESTS = Counter(
    "fleetloop_grpc_undecodable_requests_total",
    "gRPC requests whose bytes do not parse as the method's request message (answered INTERNAL), by service.",
    ["service"],
)

SERVER_KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 2),
]
CHANNEL_KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]

AUTH_EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)
"""Methods served without a token."""

_AUTH_HEADER = "authorization"

MAX_PEM_BYTES = 1 << 20
"""Largest PEM file read: a certificate chain or key is a few KB, a CA bundle a few hundred."""


@dataclass(frozen=True)
class TlsConfig:
    """PEM material for one side of a TLS connection.

    Args:
        ca_cert: Roots that verify the peer: the server's CA on a client; on a server, the CA of
            client certificates (needed for ``require_client_auth``).
        cert_chain: This side's certificate chain; required on a server, optional on a client (mutual TLS).
        private_key: Key of ``cert_chain``.
        require_client_auth: Server only: reject clients without a certificate signed by ``ca_cert``.
        server_name: Client only: name to verify in the server certificate instead of the target host.
    """

    ca_cert: bytes | None = None
    cert_chain: bytes | None = None
    private_key: bytes | None = None
    require_client_auth: bool = False
    server_name: str | None = None

    @classmethod
    def from_files(cls, ca_cert: str | Path | None = None, cert_chain: str | Path | None = None,
                   private_key: str | Path | None = None, **kwargs) -> "TlsConfig":
        """Read the PEM files that are given; other arguments as for the constructor.

        Raises:
            fleetloop.limits.InputError (a ValueError): naming a file that is missing, not a regular
                file or over MAX_PEM_BYTES.
        """

        def read(path: str | Path | None) -> bytes | None:
            return read_limited(Path(path), MAX_PEM_BYTES) if path is not None else None

        return cls(read(ca_cert), read(cert_chain), read(private_key), **kwargs)

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials for ``server.add_secure_port``.

        Raises:
            ValueError: the certificate or key is missing, or client auth is required without a CA.
        """
        if self.cert_chain is None or self.private_key is None:
            raise ValueError("a TLS server needs cert_chain and private_key")
        if self.require_client_auth and self.ca_cert is None:
            raise ValueError("require_client_auth needs ca_cert to verify client certificates")
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)], root_certificates=self.ca_cert,
            require_client_auth=self.require_client_auth,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials for ``grpc.secure_channel`` (the system roots when ``ca_cert`` is None)."""
        if (self.cert_chain is None) != (self.private_key is None):
            raise ValueError("a TLS client certificate needs both cert_chain and private_key")
        return grpc.ssl_channel_credentials(self.ca_cert, self.private_key, self.cert_chain)

    def channel_options(self) -> list[tuple[str, str]]:
        """Channel options this config needs (the server name override)."""
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


_HANDLER_FACTORIES = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


def _replace(handler: grpc.RpcMethodHandler, *, behaviour=None, request_deserializer=None) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s kind with its behaviour or request deserializer replaced."""
    kind, make = next((kind, make) for kind, make in _HANDLER_FACTORIES if getattr(handler, kind))
    return make(behaviour or getattr(handler, kind),
                request_deserializer=request_deserializer or handler.request_deserializer,
                response_serializer=handler.response_serializer)


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Rejects calls without ``authorization: Bearer <token>`` with UNAUTHENTICATED, except exempt
    methods; counts rejections under ``service`` (e.g. ``weights``, ``robot``)."""

    def __init__(self, token: str, service: str):
        if not token:
            raise ValueError("token must be non-empty")
        self._expected = f"Bearer {token}".encode()
        self._service = service

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(AUTH_EXEMPT_PREFIXES) or self._authorized(handler_call_details.invocation_metadata):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        AUTH_FAILURES.labels(self._service).inc()
        logger.warning("rejected %s: missing or wrong bearer token", method)

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        return _replace(handler, behaviour=deny)

    def _authorized(self, metadata) -> bool:
        for key, value in metadata or ():
            if key == _AUTH_HEADER:
                given = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(given, self._expected)
        return False


class UndecodableRequestInterceptor(grpc.ServerInterceptor):
    """Counts requests whose bytes do not parse as the method's request message under ``service``.

    gRPC Python parses a request before any handler runs; when the request deserializer raises, the
    server logs it and answers INTERNAL "Exception deserializing request!" itself. This interceptor
    wraps each method's request deserializer to count those failures. Installed first by
    ``start_server``, it wraps the token check's refusal too: undecodable bytes with a wrong token also
    get INTERNAL, counted here and as an auth failure.
    """

    def __init__(self, service: str):
        self._service = service

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer

        def counted(data: bytes):
            try:
                return parse(data)
            except Exception:
                UNDECODABLE_REQUESTS.labels(self._service).inc()
                raise

        return _replace(handler, request_deserializer=counted)


class _TokenClientInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds the bearer token to every unary and server-streaming call."""

    def __init__(self, token: str):
        self._header = (_AUTH_HEADER, f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(details.method, details.timeout, [*(details.metadata or ()), self._header],
                            details.credentials, details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method, self.timeout, self.metadata = method, timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = credentials, wait_for_ready, compression


def open_channel(target: str, options: list[tuple[str, object]], tls: TlsConfig | None = None,
                 token: str | None = None) -> grpc.Channel:
    """A channel to ``target`` with keep-alives: TLS when ``tls`` is given, sending ``token`` on
    every call when given."""
    options = [*options, *CHANNEL_KEEPALIVE_OPTIONS]
    if tls is not None:
        channel = grpc.secure_channel(target, tls.channel_credentials(), options=[*options, *tls.channel_options()])
    else:
        channel = grpc.insecure_channel(target, options=options)
    return grpc.intercept_channel(channel, _TokenClientInterceptor(token)) if token else channel


def address(host: str, port: int) -> str:
    """``host:port`` for gRPC, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def start_server(name: str, host: str, port: int, *, service: str, workers: int, max_send_bytes: int,
                 max_receive_bytes: int, add_servicers: Callable[[grpc.Server], None], health_services: Iterable[str],
                 interceptors: list[grpc.ServerInterceptor], tls: TlsConfig | None,
                 token_required: bool) -> tuple[grpc.Server, health.HealthServicer, int]:
    """Build, bind and start a gRPC server whose health service reports ``health_services`` SERVING
    and whose undecodable requests are counted (``UndecodableRequestInterceptor``, before ``interceptors``).

    Args:
        name: the service as logs and errors name it, e.g. "weight service".
        service: the service as metrics label it, e.g. "weights".
        workers: handler threads, also the limit of concurrent calls.
        add_servicers: registers the service's servicers on the server.

    Returns:
        (server, its health servicer, the bound port).

    Raises:
        OSError: the address cannot be bound (e.g. the port is in use).
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name.replace(" ", "-")),
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_send_message_length", max_send_bytes),
            ("grpc.max_receive_message_length", max_receive_bytes),
            *SERVER_KEEPALIVE_OPTIONS,
        ],
        maximum_concurrent_rpcs=workers,
        interceptors=[UndecodableRequestInterceptor(service), *interceptors],
    )
    add_servicers(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    where = address(host, port)
    failure = f"{name} cannot bind {where}: port in use or address unavailable"
    try:
        bound = server.add_insecure_port(where) if tls is None else server.add_secure_port(
            where, tls.server_credentials())
    except RuntimeError as exc:
        server.stop(None)
        raise OSError(failure) from exc
    if bound == 0:
        server.stop(None)
        raise OSError(failure)
    server.start()
    for service in health_services:
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    transport = "plaintext" if tls is None else "mutual TLS" if tls.require_client_auth else "TLS"
    logger.info("%s listening on %s (%s, %s)", name, address(host, bound), transport,
                "bearer token" if token_required else "no token")
    return server, health_servicer, bound
