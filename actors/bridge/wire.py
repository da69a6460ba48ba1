"""Conversions between the bridge's Python types (``backend.py``) and RobotService messages.

Arrays travel as raw float32 little-endian bytes with their dims beside them; images as raw RGB8
or PNG. No pickle. An image from the wire is checked against ``fleetloop.limits.MAX_IMAGE_PIXELS``
and, for a PNG, its header against the message's size before any pixel is decoded.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from fleetloop.actors.bridge.backend import (
    ActResult,
    Intervention,
    InvalidRequest,
    Observation,
    RobotInfo,
    StopReason,
)
from fleetloop.limits import check_image_size, decode_png
from fleetloop.protos import robot_pb2

_F32 = np.dtype("<f4")

REASON_METADATA = "fleetloop-reason"
"""Trailing metadata key carrying a refusal's reason (``RobotError.reason``, e.g. ``operator_control``)."""


def f32_bytes(array: np.ndarray) -> bytes:
    """``array`` as float32 little-endian bytes, row-major."""
    return np.ascontiguousarray(array, dtype=_F32).tobytes()


def f32_array(data: bytes, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A native float32 array of ``shape`` from little-endian bytes.

    Raises:
        ValueError: ``data`` is not exactly ``shape`` float32 values; the message names ``what``.
    """
    expected = math.prod(shape) * _F32.itemsize
    if len(data) != expected:
        raise ValueError(f"{what}: got {len(data)} bytes, expected {expected} ({'x'.join(map(str, shape))} float32)")
    return np.frombuffer(data, dtype=_F32).astype(np.float32).reshape(shape)


def decode_chunk(request: robot_pb2.ActionChunk) -> np.ndarray:
    """The (horizon, action_dim) actions of ``request``.

    Raises:
        InvalidRequest: the byte length does not match horizon x action_dim float32.
    """
    try:
        return f32_array(request.actions, (request.horizon, request.action_dim), "actions")
    except ValueError as exc:
        raise InvalidRequest("bad_length", str(exc)) from None


def info_to_proto(info: RobotInfo) -> robot_pb2.RobotInfo:
    return robot_pb2.RobotInfo(
        robot_ids=info.robot_ids, embodiment=info.embodiment, state_dim=info.state_dim, action_dim=info.action_dim,
        max_horizon=info.max_horizon, control_rate_hz=info.control_rate_hz, image_height=info.image_size[0],
        image_width=info.image_size[1], action_low=f32_bytes(info.action_low), action_high=f32_bytes(info.action_high),
        backend=info.backend,
    )


def info_from_proto(message: robot_pb2.RobotInfo) -> RobotInfo:
    dims = (message.action_dim,)
    return RobotInfo(
        robot_ids=tuple(message.robot_ids), embodiment=message.embodiment, state_dim=message.state_dim,
        action_dim=message.action_dim, max_horizon=message.max_horizon, control_rate_hz=message.control_rate_hz,
        image_size=(message.image_height, message.image_width),
        action_low=f32_array(message.action_low, dims, "action_low"),
        action_high=f32_array(message.action_high, dims, "action_high"), backend=message.backend,
    )


def _image_to_proto(image: np.ndarray, encoding: int) -> robot_pb2.Image:
    height, width = image.shape[:2]
    if encoding == robot_pb2.IMAGE_ENCODING_PNG:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image, np.uint8), "RGB").save(buffer, format="PNG")
        data = buffer.getvalue()
    else:
        data = np.ascontiguousarray(image, np.uint8).tobytes()
    return robot_pb2.Image(height=height, width=width, encoding=encoding, data=data)


def _image_from_proto(message: robot_pb2.Image) -> np.ndarray:
    """The (height, width, 3) uint8 image of ``message``.

    Raises:
        ValueError: the image exceeds MAX_IMAGE_PIXELS, its bytes do not hold height x width RGB
            pixels, or it is not a PNG of that size; checked before any pixel is decoded.
    """
    height, width = message.height, message.width
    if message.encoding == robot_pb2.IMAGE_ENCODING_PNG:
        return decode_png(message.data, "image", (height, width))
    check_image_size(height, width, "image")
    image = np.frombuffer(message.data, np.uint8)
    if image.size != height * width * 3:
        raise ValueError(f"image: got {image.size} bytes, expected {height}x{width}x3")
    return image.reshape(height, width, 3).copy()


def observation_to_proto(obs: Observation, image_encoding: int = robot_pb2.IMAGE_ENCODING_RAW_RGB8
                         ) -> robot_pb2.Observation:
    message = robot_pb2.Observation(
        robot_id=obs.robot_id, episode_id=obs.episode_id, step=obs.step, state=f32_bytes(obs.state),
        state_dim=len(obs.state), instruction=obs.instruction, done=obs.done, success=obs.success, info=obs.info,
        stamp_unix_ms=obs.stamp_unix_ms,
    )
    if obs.image is not None:
        message.image.CopyFrom(_image_to_proto(obs.image, image_encoding))
    return message


def observation_from_proto(message: robot_pb2.Observation) -> Observation:
    return Observation(
        robot_id=message.robot_id, episode_id=message.episode_id, step=message.step,
        state=f32_array(message.state, (message.state_dim,), "state"), instruction=message.instruction,
        done=message.done, success=message.success, info=dict(message.info),
        image=_image_from_proto(message.image) if message.HasField("image") else None,
        stamp_unix_ms=message.stamp_unix_ms,
    )


def act_result_to_proto(result: ActResult, image_encoding: int) -> robot_pb2.ActResult:
    return robot_pb2.ActResult(
        executed_steps=result.executed_steps, stop_reason=result.stop_reason.value,
        observation=observation_to_proto(result.observation, image_encoding), step_states=f32_bytes(result.step_states),
    )


def act_result_from_proto(message: robot_pb2.ActResult) -> ActResult:
    observation = observation_from_proto(message.observation)
    shape = (message.executed_steps, len(observation.state))
    return ActResult(
        executed_steps=message.executed_steps, stop_reason=StopReason(message.stop_reason), observation=observation,
        step_states=f32_array(message.step_states, shape, "step_states"),
    )


def intervention_to_proto(item: Intervention) -> robot_pb2.Intervention:
    message = robot_pb2.Intervention(
        robot_id=item.robot_id, episode_id=item.episode_id, step=item.step, reason=item.reason,
        operator_id=item.operator_id, started=item.started, ended=item.ended, ended_by=item.ended_by,
    )
    if item.actions is not None:
        message.horizon, message.action_dim = item.actions.shape
        message.actions = f32_bytes(item.actions)
        message.states = f32_bytes(item.states)
        message.state_dim = item.states.shape[1]
    return message


def intervention_from_proto(message: robot_pb2.Intervention) -> Intervention:
    has_chunk = message.horizon > 0
    return Intervention(
        robot_id=message.robot_id, episode_id=message.episode_id, step=message.step, reason=message.reason,
        operator_id=message.operator_id, started=message.started, ended=message.ended, ended_by=message.ended_by,
        actions=f32_array(message.actions, (message.horizon, message.action_dim), "actions") if has_chunk else None,
        states=f32_array(message.states, (message.horizon, message.state_dim), "states") if has_chunk else None,
    )
