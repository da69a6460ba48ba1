"""Shared set-up of the fuzz suites: every fuzz test runs a fixed, derandomized budget, so CI sees the
same examples on every run (derandomized, hypothesis keeps no example database) and hypothesis keeps
its other files under the system temp dir, never in the checkout; helpers send raw bytes to any RPC
method of a real server."""

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

HYPOTHESIS_HOME = Path(tempfile.gettempdir()) / "fleetloop-hypothesis"
# Read lazily, the first time hypothesis needs storage (its charmap and constants caches).
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(HYPOTHESIS_HOME))


def fuzz_settings(max_examples: int, deadline_s: float) -> settings:
    """A fixed fuzz budget: ``max_examples`` derandomized examples, each within ``deadline_s``.

    Function-scoped fixtures (a server, a Valkey) are shared by the examples on purpose: each example
    checks the server's health or the replay's counters itself.
    """
    return settings(
        max_examples=max_examples,
        deadline=deadline_s * 1000,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                               HealthCheck.data_too_large],
        print_blob=True,
    )


# ---- raw gRPC calls ------------------------------------------------------------------------------


CALL_DEADLINE_S = 5.0
"""Deadline of a fuzzed call that should answer at once; passing it means the server hung."""
UNDECODABLE = "Exception deserializing request!"
"""gRPC's details when the server cannot parse a request (status INTERNAL, before any handler)."""
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"]

TOKEN = "fuzz-token"
AUTH = {"good": (("authorization", f"Bearer {TOKEN}"),), "missing": (), "wrong": (("authorization", "Bearer no"),)}
"""Call metadata of each kind of caller the fuzzed services meet."""
AUTH_CHOICES = ["good", "good", "good", "missing", "wrong"]


def edit_bytes(draw, data: bytearray, max_insert: int = 8, overwrite_run: int = 0) -> None:
    """Overwrite, insert or cut off bytes of ``data`` in place, 1 to 4 times (``draw`` of a
    composite strategy). An overwrite replaces one byte, or with ``overwrite_run`` up to that many
    bytes from the position on with 1..overwrite_run fresh ones."""
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["overwrite", "insert", "truncate"]))
        if edit == "truncate":
            del data[at:]
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=max_insert))
        elif at < len(data):
            if overwrite_run:
                data[at:at + overwrite_run] = draw(st.binary(min_size=1, max_size=overwrite_run))
            else:
                data[at] = draw(st.integers(0, 255))


@dataclass(frozen=True)
class Method:
    """One RPC method: its path, request message class and whether it streams its answers."""

    path: str
    request: type[Message]
    streaming: bool

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def health(self) -> bool:
        return self.path.startswith(f"/{HEALTH_SERVICE.full_name}/")

    def parse(self, payload: bytes) -> Message | None:
        """The request the server will see in ``payload``, or None when it cannot parse it."""
        try:
            return self.request.FromString(payload)
        except DecodeError:
            return None


def methods_of(*services) -> list[Method]:
    """Every method of the given service descriptors (none of ours stream requests)."""
    found = []
    for service in services:
        for method in service.methods:
            assert not method.client_streaming, f"{method.full_name}: request streams are not fuzzed here"
            found.append(Method(f"/{service.full_name}/{method.name}",
                                message_factory.GetMessageClass(method.input_type), method.server_streaming))
    return found


@dataclass
class Outcome:
    """What a raw call got: its status (OK also for a stream cancelled after ``max_messages``), the
    answers as raw bytes and the trailing ``fleetloop-reason``, if any."""

    code: grpc.StatusCode
    details: str
    messages: list[bytes] = field(default_factory=list)
    reason: str = ""


def _reason(call) -> str:
    return dict(call.trailing_metadata() or ()).get("fleetloop-reason", "")


def invoke(channel: grpc.Channel, method: Method, payload: bytes, metadata: tuple, timeout: float = CALL_DEADLINE_S,
           max_messages: int = 1) -> Outcome:
    """Send ``payload`` unchanged as the request of ``method``; for a stream, read at most
    ``max_messages`` answers, then cancel it."""
    if not method.streaming:
        try:
            response, call = channel.unary_unary(method.path).with_call(payload, timeout=timeout, metadata=metadata)
        except grpc.RpcError as exc:
            return Outcome(exc.code(), exc.details() or "", reason=_reason(exc))
        return Outcome(grpc.StatusCode.OK, "", [response], _reason(call))
    call = channel.unary_stream(method.path)(payload, timeout=timeout, metadata=metadata)
    messages = []
    try:
        for message in call:
            messages.append(message)
            if len(messages) >= max_messages:
                call.cancel()
                return Outcome(grpc.StatusCode.OK, "", messages)
    except grpc.RpcError as exc:
        return Outcome(exc.code(), exc.details() or "", messages, _reason(exc))
    return Outcome(call.code(), call.details() or "", messages, _reason(call))


def health_expectation(method: Method, request: Message, serving: tuple[str, ...]) -> grpc.StatusCode:
    """Status the health service answers ``request`` with (it needs no token)."""
    if method.name == "Check":
        return grpc.StatusCode.OK if request.service in serving else grpc.StatusCode.NOT_FOUND
    if method.name == "List":  # grpcio-health-checking's servicer does not implement it
        return grpc.StatusCode.UNIMPLEMENTED
    return grpc.StatusCode.OK  # Watch first sends the status, SERVICE_UNKNOWN for an unknown service


def assert_serving(channel: grpc.Channel, serving: tuple[str, ...]) -> None:
    """Every name in ``serving`` is SERVING."""
    check = channel.unary_unary(f"/{HEALTH_SERVICE.full_name}/Check",
                                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                                response_deserializer=health_pb2.HealthCheckResponse.FromString)
    for service in serving:
        status = check(health_pb2.HealthCheckRequest(service=service), timeout=CALL_DEADLINE_S).status
        assert status == health_pb2.HealthCheckResponse.SERVING, f"health of {service!r}: {status}"


def raw_channel(address: str) -> grpc.Channel:
    """A plain channel that sends any size (so the server's own limit is what refuses) and takes
    trailers of any size (so a long refusal text arrives as the server sent it)."""
    return grpc.insecure_channel(address, options=[("grpc.max_send_message_length", -1),
                                                   ("grpc.max_receive_message_length", 64 << 20),
                                                   ("grpc.max_metadata_size", 16 << 20),
                                                   ("grpc.absolute_max_metadata_size", 16 << 20)])
