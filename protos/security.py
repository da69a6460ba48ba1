"""TLS credentials and bearer-token checks shared by the WeightService server and its clients.

``TlsConfig`` holds PEM bytes and builds server or channel credentials (mutual TLS when the
server requires client certificates). A bearer token travels as ``authorization: Bearer <token>``
metadata on every call: ``TokenAuthInterceptor`` rejects a missing or wrong one with
UNAUTHENTICATED and counts it; ``bearer_token_channel`` adds it on the client side. The gRPC
health service is exempt, so probes need no token.
"""

import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
from prometheus_client import Counter

logger = logging.getLogger(__name__)

AUTH_FAILURES = Counter(
    "fleetloop_grpc_auth_failures_total", "gRPC calls rejected for a missing or wrong bearer token, by service.",
    ["service"],
)

AUTH_EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)
"""Methods served without a token."""

_AUTH_HEADER = "authorization"


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
        """Read the PEM files that are given; other arguments as for the constructor."""

        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path is not None else None

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

        make = grpc.unary_stream_rpc_method_handler if handler.response_streaming else grpc.unary_unary_rpc_method_handler
        return make(deny, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)

    def _authorized(self, metadata) -> bool:
        for key, value in metadata or ():
            if key == _AUTH_HEADER:
                given = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(given, self._expected)
        return False


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
    """A channel to ``target``: TLS when ``tls`` is given, sending ``token`` on every call when given."""
    if tls is not None:
        channel = grpc.secure_channel(target, tls.channel_credentials(), options=[*options, *tls.channel_options()])
    else:
        channel = grpc.insecure_channel(target, options=options)
    return grpc.intercept_channel(channel, _TokenClientInterceptor(token)) if token else channel
