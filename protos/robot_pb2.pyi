from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_ENCODING_RAW_RGB8: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_PNG: _ClassVar[ImageEncoding]

class StopReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STOP_REASON_UNSPECIFIED: _ClassVar[StopReason]
    STOP_REASON_COMPLETED: _ClassVar[StopReason]
    STOP_REASON_EPISODE_ENDED: _ClassVar[StopReason]
    STOP_REASON_OPERATOR_TOOK_OVER: _ClassVar[StopReason]
IMAGE_ENCODING_RAW_RGB8: ImageEncoding
IMAGE_ENCODING_PNG: ImageEncoding
STOP_REASON_UNSPECIFIED: StopReason
STOP_REASON_COMPLETED: StopReason
STOP_REASON_EPISODE_ENDED: StopReason
STOP_REASON_OPERATOR_TOOK_OVER: StopReason

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RobotInfo(_message.Message):
    __slots__ = ("robot_ids", "embodiment", "state_dim", "action_dim", "max_horizon", "control_rate_hz", "image_height", "image_width", "action_low", "action_high", "backend")
    ROBOT_IDS_FIELD_NUMBER: _ClassVar[int]
    EMBODIMENT_FIELD_NUMBER: _ClassVar[int]
    STATE_DIM_FIELD_NUMBER: _ClassVar[int]
    ACTION_DIM_FIELD_NUMBER: _ClassVar[int]
    MAX_HORIZON_FIELD_NUMBER: _ClassVar[int]
    CONTROL_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    ACTION_LOW_FIELD_NUMBER: _ClassVar[int]
    ACTION_HIGH_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    robot_ids: _containers.RepeatedScalarFieldContainer[str]
    embodiment: str
    state_dim: int
    action_dim: int
    max_horizon: int
    control_rate_hz: float
    image_height: int
    image_width: int
    action_low: bytes
    action_high: bytes
    backend: str
    def __init__(self, robot_ids: _Optional[_Iterable[str]] = ..., embodiment: _Optional[str] = ..., state_dim: _Optional[int] = ..., action_dim: _Optional[int] = ..., max_horizon: _Optional[int] = ..., control_rate_hz: _Optional[float] = ..., image_height: _Optional[int] = ..., image_width: _Optional[int] = ..., action_low: _Optional[bytes] = ..., action_high: _Optional[bytes] = ..., backend: _Optional[str] = ...) -> None: ...

class ResetRequest(_message.Message):
    __slots__ = ("seed", "options", "want_image", "image_encoding")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SEED_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    WANT_IMAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ENCODING_FIELD_NUMBER: _ClassVar[int]
    seed: int
    options: _containers.ScalarMap[str, str]
    want_image: bool
    image_encoding: ImageEncoding
    def __init__(self, seed: _Optional[int] = ..., options: _Optional[_Mapping[str, str]] = ..., want_image: _Optional[bool] = ..., image_encoding: _Optional[_Union[ImageEncoding, str]] = ...) -> None: ...

class ResetResponse(_message.Message):
    __slots__ = ("episode_id", "observations")
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    episode_id: str
    observations: _containers.RepeatedCompositeFieldContainer[Observation]
    def __init__(self, episode_id: _Optional[str] = ..., observations: _Optional[_Iterable[_Union[Observation, _Mapping]]] = ...) -> None: ...

class ObserveRequest(_message.Message):
    __slots__ = ("robot_id", "want_image", "image_encoding")
    ROBOT_ID_FIELD_NUMBER: _ClassVar[int]
    WANT_IMAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ENCODING_FIELD_NUMBER: _ClassVar[int]
    robot_id: str
    want_image: bool
    image_encoding: ImageEncoding
    def __init__(self, robot_id: _Optional[str] = ..., want_image: _Optional[bool] = ..., image_encoding: _Optional[_Union[ImageEncoding, str]] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("height", "width", "encoding", "data")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    encoding: ImageEncoding
    data: bytes
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., encoding: _Optional[_Union[ImageEncoding, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Observation(_message.Message):
    __slots__ = ("robot_id", "episode_id", "step", "state", "state_dim", "instruction", "image", "done", "success", "info", "stamp_unix_ms")
    class InfoEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ROBOT_ID_FIELD_NUMBER: _ClassVar[int]
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_DIM_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    STAMP_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    robot_id: str
    episode_id: str
    step: int
    state: bytes
    state_dim: int
    instruction: str
    image: Image
    done: bool
    success: bool
    info: _containers.ScalarMap[str, float]
    stamp_unix_ms: int
    def __init__(self, robot_id: _Optional[str] = ..., episode_id: _Optional[str] = ..., step: _Optional[int] = ..., state: _Optional[bytes] = ..., state_dim: _Optional[int] = ..., instruction: _Optional[str] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., done: _Optional[bool] = ..., success: _Optional[bool] = ..., info: _Optional[_Mapping[str, float]] = ..., stamp_unix_ms: _Optional[int] = ...) -> None: ...

class ActionChunk(_message.Message):
    __slots__ = ("robot_id", "episode_id", "step", "horizon", "action_dim", "actions", "execute_steps", "want_image", "image_encoding")
    ROBOT_ID_FIELD_NUMBER: _ClassVar[int]
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    HORIZON_FIELD_NUMBER: _ClassVar[int]
    ACTION_DIM_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    EXECUTE_STEPS_FIELD_NUMBER: _ClassVar[int]
    WANT_IMAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ENCODING_FIELD_NUMBER: _ClassVar[int]
    robot_id: str
    episode_id: str
    step: int
    horizon: int
    action_dim: int
    actions: bytes
    execute_steps: int
    want_image: bool
    image_encoding: ImageEncoding
    def __init__(self, robot_id: _Optional[str] = ..., episode_id: _Optional[str] = ..., step: _Optional[int] = ..., horizon: _Optional[int] = ..., action_dim: _Optional[int] = ..., actions: _Optional[bytes] = ..., execute_steps: _Optional[int] = ..., want_image: _Optional[bool] = ..., image_encoding: _Optional[_Union[ImageEncoding, str]] = ...) -> None: ...

class ActResult(_message.Message):
    __slots__ = ("executed_steps", "stop_reason", "observation", "step_states")
    EXECUTED_STEPS_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    STEP_STATES_FIELD_NUMBER: _ClassVar[int]
    executed_steps: int
    stop_reason: StopReason
    observation: Observation
    step_states: bytes
    def __init__(self, executed_steps: _Optional[int] = ..., stop_reason: _Optional[_Union[StopReason, str]] = ..., observation: _Optional[_Union[Observation, _Mapping]] = ..., step_states: _Optional[bytes] = ...) -> None: ...

class InterventionRequest(_message.Message):
    __slots__ = ("robot_ids",)
    ROBOT_IDS_FIELD_NUMBER: _ClassVar[int]
    robot_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, robot_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Intervention(_message.Message):
    __slots__ = ("robot_id", "episode_id", "step", "reason", "operator_id", "started", "ended", "horizon", "action_dim", "actions", "states", "state_dim", "subscribed", "ended_by")
    ROBOT_ID_FIELD_NUMBER: _ClassVar[int]
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    HORIZON_FIELD_NUMBER: _ClassVar[int]
    ACTION_DIM_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    STATE_DIM_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    ENDED_BY_FIELD_NUMBER: _ClassVar[int]
    robot_id: str
    episode_id: str
    step: int
    reason: str
    operator_id: str
    started: bool
    ended: bool
    horizon: int
    action_dim: int
    actions: bytes
    states: bytes
    state_dim: int
    subscribed: bool
    ended_by: str
    def __init__(self, robot_id: _Optional[str] = ..., episode_id: _Optional[str] = ..., step: _Optional[int] = ..., reason: _Optional[str] = ..., operator_id: _Optional[str] = ..., started: _Optional[bool] = ..., ended: _Optional[bool] = ..., horizon: _Optional[int] = ..., action_dim: _Optional[int] = ..., actions: _Optional[bytes] = ..., states: _Optional[bytes] = ..., state_dim: _Optional[int] = ..., subscribed: _Optional[bool] = ..., ended_by: _Optional[str] = ...) -> None: ...
