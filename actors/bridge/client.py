"""RobotClient: typed calls to a robot bridge (RobotService), returning numpy arrays.

Every unary call has a deadline: ``deadline_s``, plus for Act the time the chunk takes at the
robot's control rate. A bridge that is down or does not answer in time raises ``BridgeUnavailable``
(never a hang); the client then drops its channel and dials afresh on the next call, so it works
again as soon as the bridge is back. Refusals raise ``BridgeError`` carrying the gRPC status code,
the bridge's explanation and the refusal's reason. ``subscribe_interventions`` opens an
``InterventionStream`` only once the bridge confirmed it, so no takeover after it is missed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Mapping

import grpc
import numpy as np

from fleetloop.actors.bridge import wire
from fleetloop.actors.bridge.backend import ActResult, Intervention, Observation, RobotInfo
from fleetloop.protos import robot_pb2, robot_pb2_grpc
from fleetloop.protos.security import TlsConfig, open_channel

_UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class BridgeError(Exception):
    """The bridge refused a call; ``code`` is the gRPC status, ``details`` its explanation and
    ``reason`` the refusal's short name (e.g. ``operator_control``; "" when the bridge gave none)."""

    def __init__(self, code: grpc.StatusCode, details: str, reason: str = ""):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.reason = reason


class BridgeUnavailable(BridgeError):
    """The bridge is unreachable or did not answer within the deadline."""


def _encoding(png: bool) -> int:
    return robot_pb2.IMAGE_ENCODING_PNG if png else robot_pb2.IMAGE_ENCODING_RAW_RGB8


class RobotClient:
    """A connection to one robot bridge; thread-safe.

    Args:
        target: Bridge address, e.g. ``"127.0.0.1:50061"``.
        tls: Connect over TLS (with a client certificate for mutual TLS); plaintext when None.
        token: Bearer token sent on every call, when the bridge requires one.
        deadline_s: Deadline of every call (Act: plus the chunk's execution time).
        max_message_bytes: Largest message sent or received.
    """

    def __init__(self, target: str, tls: TlsConfig | None = None, token: str | None = None,
                 deadline_s: float = 5.0, max_message_bytes: int = 4 << 20):
        if not deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
        self.target = target
        self.tls = tls
        self.deadline_s = deadline_s
        self.max_message_bytes = max_message_bytes
        self._token = token
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: robot_pb2_grpc.RobotServiceStub | None = None
        self._info: RobotInfo | None = None

    @classmethod
    def from_config(cls, bridge, target: str | None = None) -> RobotClient:
        """A client as the ``bridge`` config section says (TLS, token, deadline, message limit),
        to ``target`` or else the section's host and port."""
        tls, token = bridge.credentials()
        return cls(target or f"{bridge.host}:{bridge.port}", tls=tls, token=token, deadline_s=bridge.deadline_s,
                   max_message_bytes=bridge.max_message_bytes)

    # ---- calls -------------------------------------------------------------------------------

    def info(self) -> RobotInfo:
        """The bridge's robots, dims, chunk limit, control rate and camera size (fetched once)."""
        if self._info is None:
            self._info = wire.info_from_proto(self._call("GetInfo", robot_pb2.InfoRequest()))
        return self._info

    def reset(self, seed: int | None = None, options: Mapping[str, str] | None = None, want_image: bool = False,
              png: bool = False) -> dict[str, Observation]:
        """Start a new episode; each robot's first observation by robot id."""
        request = robot_pb2.ResetRequest(seed=seed, options=dict(options or {}), want_image=want_image,
                                         image_encoding=_encoding(png))
        response = self._call("Reset", request)
        return {message.robot_id: wire.observation_from_proto(message) for message in response.observations}

    def observe(self, robot_id: str, want_image: bool = False, png: bool = False) -> Observation:
        """``robot_id``'s current observation (with a camera image when ``want_image``)."""
        request = robot_pb2.ObserveRequest(robot_id=robot_id, want_image=want_image, image_encoding=_encoding(png))
        return wire.observation_from_proto(self._call("Observe", request))

    def act(self, planned_from: Observation, actions: np.ndarray, execute_steps: int | None = None,
            want_image: bool = False, png: bool = False) -> ActResult:
        """Send the (H, action_dim) chunk planned from ``planned_from`` and execute its first
        ``execute_steps`` actions (default: all H)."""
        chunk = np.asarray(actions, np.float32)
        if chunk.ndim != 2:
            raise ValueError(f"actions must be (horizon, action_dim), got shape {chunk.shape}")
        steps = chunk.shape[0] if execute_steps is None else execute_steps
        request = robot_pb2.ActionChunk(
            robot_id=planned_from.robot_id, episode_id=planned_from.episode_id, step=planned_from.step,
            horizon=chunk.shape[0], action_dim=chunk.shape[1], actions=wire.f32_bytes(chunk),
            execute_steps=steps, want_image=want_image, image_encoding=_encoding(png),
        )
        timeout = self.deadline_s + steps / self.info().control_rate_hz
        return wire.act_result_from_proto(self._call("Act", request, timeout))

    def subscribe_interventions(self, robot_ids: Iterable[str] = ()) -> InterventionStream:
        """Follow the interventions of ``robot_ids`` (all when empty). Returns once the bridge has
        confirmed the subscription, so no takeover published afterwards is missed.

        Raises:
            BridgeError: the bridge refused (e.g. NOT_FOUND for an unknown robot id).
            BridgeUnavailable: the bridge is down or did not confirm within ``deadline_s``.
        """
        call = self._connect().StreamInterventions(robot_pb2.InterventionRequest(robot_ids=list(robot_ids)))
        stream = InterventionStream(self, call)
        try:
            first = stream._next(self.deadline_s)
            if first is None or not first.subscribed:
                raise BridgeUnavailable(grpc.StatusCode.DEADLINE_EXCEEDED, f"robot bridge at {self.target} did not "
                                        f"confirm the intervention subscription within {self.deadline_s:.1f} s")
        except BridgeError as exc:
            stream.close()
            if isinstance(exc, BridgeUnavailable):
                self.close()
            raise
        return stream

    # ---- connection --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the channel (a later call opens a new one, and fetches the info afresh: the bridge
        answering there may have been replaced)."""
        with self._lock:
            channel, self._channel, self._stub, self._info = self._channel, None, None, None
        if channel is not None:
            channel.close()

    def __enter__(self) -> RobotClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _connect(self) -> robot_pb2_grpc.RobotServiceStub:
        with self._lock:
            if self._stub is None:
                self._channel = open_channel(self.target, tls=self.tls, token=self._token, options=[
                    ("grpc.max_receive_message_length", self.max_message_bytes),
                    ("grpc.max_send_message_length", self.max_message_bytes),
                ])
                self._stub = robot_pb2_grpc.RobotServiceStub(self._channel)
            return self._stub

    def _call(self, method: str, request, timeout: float | None = None):
        timeout = self.deadline_s if timeout is None else timeout
        try:
            return getattr(self._connect(), method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            error = self._error(method, exc, timeout)
            if isinstance(error, BridgeUnavailable):
                self.close()  # dial afresh next time rather than wait out gRPC's reconnect backoff
            raise error from None

    def _error(self, method: str, exc: grpc.RpcError, timeout: float | None) -> BridgeError:
        """The error to raise for a failed call."""
        code, details = exc.code(), exc.details() or ""
        if code not in _UNAVAILABLE:
            reasons = [value for key, value in exc.trailing_metadata() or () if key == wire.REASON_METADATA]
            return BridgeError(code, details, reasons[0] if reasons else "")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return BridgeUnavailable(code, f"robot bridge at {self.target} did not answer {method} "
                                           f"within {timeout:.1f} s")
        return BridgeUnavailable(code, f"robot bridge at {self.target} is unavailable for {method}: {details}")


class InterventionStream:
    """An open intervention subscription (``RobotClient.subscribe_interventions``): a reader thread
    queues the bridge's messages for ``get``. Once the stream breaks, ``get`` returns what had
    arrived, then raises the error (BridgeUnavailable when the bridge went away or ended the stream)."""

    def __init__(self, client: RobotClient, call):
        self._client = client
        self._call = call
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._broken: BridgeError | None = None  # why the stream ended, once get reached that point
        self._reader = threading.Thread(target=self._read, daemon=True, name="bridge-interventions")
        self._reader.start()

    def get(self, timeout: float | None = None) -> Intervention | None:
        """The next intervention; None after ``timeout`` seconds without one, or once closed.

        Raises:
            BridgeError: the stream broke (BridgeUnavailable: the bridge is gone or stopping).
        """
        message = self._next(timeout)
        return None if message is None else wire.intervention_from_proto(message)

    @property
    def open(self) -> bool:
        """False once closed or once the bridge ended the stream (``get`` then raises why)."""
        return not self._closed and self._reader.is_alive()

    def close(self) -> None:
        """Cancel the subscription and wait for the reader thread; idempotent."""
        self._closed = True
        self._call.cancel()
        self._reader.join(timeout=self._client.deadline_s)

    def __enter__(self) -> InterventionStream:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _next(self, timeout: float | None) -> robot_pb2.Intervention | None:
        if self._broken is not None:
            raise self._broken
        if self._closed:
            return None
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, BridgeError):
            self._broken = item
            raise item
        return item

    def _read(self) -> None:
        try:
            for message in self._call:
                self._queue.put(message)
            error = BridgeUnavailable(grpc.StatusCode.UNAVAILABLE,
                                      f"robot bridge at {self._client.target} ended the intervention stream")
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                error = self._client._error("StreamInterventions", exc, None)
            elif self._closed:
                error = None  # wakes a blocked get
            else:  # the client closed its channel after another call found the bridge unavailable
                error = BridgeUnavailable(exc.code(), f"connection to robot bridge at {self._client.target} closed")
        self._queue.put(error)
