"""Fuzzing the RobotService over real gRPC on 127.0.0.1, against the real MuJoCo reach twin.

Arbitrary bytes and well-formed requests with hypothesis-drawn field values (unknown robot ids, stale
episodes and steps, huge and zero dims, wrong byte lengths, NaN/inf/huge floats, unknown enum values,
bad reset options and seeds, oversized repeated fields) go to every method of a started bridge (bearer
token on). Each call must get exactly the status and refusal reason a model of the twin predicts, a
refused call must leave the robot where it was, and the bridge must stay healthy and answer valid
calls afterwards. The twin's operator gate is off, so the robot's state changes only through the
fuzzed calls and every outcome can be predicted. Images the bridge sends must decode with
``wire``; images from a hostile bridge (bombs, corrupt or mislabelled PNGs) must be refused before
any pixel is decoded.
"""

import io
import re
import struct
import time
import zlib
from concurrent import futures
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from fleetloop import limits
from fleetloop.actors.bridge import (
    BridgeError,
    MujocoTwinBackend,
    RobotBridgeServer,
    RobotClient,
    wire,
)
from fleetloop.actors.bridge.server import HEALTH_SERVICES
from fleetloop.actors.envs.reach import COLOURS
from fleetloop.protos import robot_pb2, robot_pb2_grpc
from hypothesis import event, given
from hypothesis import strategies as st
from PIL import Image, ImageFile

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

METHODS = methods_of(robot_pb2.DESCRIPTOR.services_by_name["RobotService"], HEALTH_SERVICE)
BY_NAME = {method.name: method for method in METHODS}
MAX_MESSAGE_BYTES = 64 << 10
MAX_HORIZON = 8
ROBOT = "arm_0"
ACTION_DIM = 2
Code = grpc.StatusCode


@dataclass
class Twin:
    """What the test knows of the robot: the running episode (None if none), its step and done."""

    episode_id: str | None = None
    step: int = 0
    done: bool = False


@pytest.fixture
def bridge():
    """A started bridge over a reach twin (operator gate off), its backend and a raw channel."""
    server = RobotBridgeServer(MujocoTwinBackend("reach", max_horizon=MAX_HORIZON, gate=None),
                               max_message_bytes=MAX_MESSAGE_BYTES, token=TOKEN)
    server.start()
    with raw_channel(server.address) as channel:
        yield server, channel
    server.stop(grace=None)


def _chunk_problem(request: robot_pb2.ActionChunk) -> tuple[Code, str] | None:
    """The refusal the server's own checks (before the backend) give ``request``, in their order."""
    if request.robot_id != ROBOT:
        return (Code.NOT_FOUND, "unknown_robot")
    if len(request.actions) != request.horizon * request.action_dim * 4:
        return (Code.INVALID_ARGUMENT, "bad_length")
    if request.action_dim != ACTION_DIM:
        return (Code.INVALID_ARGUMENT, "bad_shape")
    if not 1 <= request.horizon <= MAX_HORIZON:
        return (Code.INVALID_ARGUMENT, "bad_horizon")
    if not 1 <= request.execute_steps <= request.horizon:
        return (Code.INVALID_ARGUMENT, "bad_execute_steps")
    if not np.isfinite(np.frombuffer(request.actions, "<f4")).all():
        return (Code.INVALID_ARGUMENT, "non_finite")
    return None


def _expected(method: Method, request, auth: str, twin: Twin) -> tuple[Code, str]:
    """(status, refusal reason) the bridge must answer a parsed ``request`` with."""
    if method.health:
        return health_expectation(method, request, HEALTH_SERVICES), ""
    if auth != "good":
        return Code.UNAUTHENTICATED, ""
    if method.name == "GetInfo":
        return Code.OK, ""
    if method.name == "Reset":
        options = dict(request.options)
        goal = options.get("goal")
        if options.get("operator", "gate") not in ("gate", "watch") or (goal is not None and goal not in COLOURS) \
                or (request.HasField("seed") and request.seed < 0):
            return (Code.INVALID_ARGUMENT, "bad_reset")
        return Code.OK, ""
    if method.name == "Observe":
        if request.robot_id != ROBOT:
            return (Code.NOT_FOUND, "unknown_robot")
        return (Code.OK, "") if twin.episode_id else (Code.FAILED_PRECONDITION, "no_episode")
    if method.name == "StreamInterventions":
        if any(robot != ROBOT for robot in request.robot_ids):
            return (Code.NOT_FOUND, "unknown_robot")
        return Code.OK, ""
    assert method.name == "Act", f"no model of {method.path}: add one"
    problem = _chunk_problem(request)
    if problem is not None:
        return problem
    if twin.episode_id is None:
        return (Code.FAILED_PRECONDITION, "no_episode")
    if request.episode_id != twin.episode_id:
        return (Code.FAILED_PRECONDITION, "stale_episode")
    if twin.done:
        return (Code.FAILED_PRECONDITION, "episode_over")
    if request.step != twin.step:
        return (Code.FAILED_PRECONDITION, "stale_step")
    return Code.OK, ""


def _check_image(observation: robot_pb2.Observation, want_image: bool) -> None:
    assert observation.HasField("image") == want_image
    decoded = wire.observation_from_proto(observation)
    if want_image:
        assert decoded.image.shape == (observation.image.height, observation.image.width, 3)


def _apply_answer(method: Method, request, messages: list[bytes], twin: Twin) -> None:
    """Check an OK answer's content against the request and update the model."""
    if method.name == "GetInfo":
        info = wire.info_from_proto(robot_pb2.RobotInfo.FromString(messages[0]))
        assert info.robot_ids == (ROBOT,) and (info.action_dim, info.max_horizon) == (ACTION_DIM, MAX_HORIZON)
    elif method.name == "Reset":
        response = robot_pb2.ResetResponse.FromString(messages[0])
        [observation] = response.observations
        assert response.episode_id and response.episode_id != twin.episode_id and observation.step == 0
        _check_image(observation, request.want_image)
        twin.episode_id, twin.step, twin.done = response.episode_id, 0, observation.done
    elif method.name == "Observe":
        observation = robot_pb2.Observation.FromString(messages[0])
        assert (observation.robot_id, observation.episode_id, observation.step) == (ROBOT, twin.episode_id, twin.step)
        _check_image(observation, request.want_image)
    elif method.name == "Act":
        result = wire.act_result_from_proto(robot_pb2.ActResult.FromString(messages[0]))
        ended = result.stop_reason == wire.StopReason.EPISODE_ENDED
        assert ended == result.observation.done
        assert result.executed_steps == request.execute_steps or (
            ended and result.executed_steps < request.execute_steps)
        assert result.observation.step == twin.step + result.executed_steps
        _check_image(robot_pb2.ActResult.FromString(messages[0]).observation, request.want_image)
        twin.step, twin.done = result.observation.step, result.observation.done
    elif method.name == "StreamInterventions":
        assert robot_pb2.Intervention.FromString(messages[0]) == robot_pb2.Intervention(subscribed=True)


def _observe(channel: grpc.Channel) -> tuple[Code, robot_pb2.Observation | None]:
    outcome = invoke(channel, BY_NAME["Observe"], robot_pb2.ObserveRequest(robot_id=ROBOT).SerializeToString(),
                     AUTH["good"])
    return outcome.code, robot_pb2.Observation.FromString(outcome.messages[0]) if outcome.messages else None


def _check_call(server: RobotBridgeServer, channel: grpc.Channel, method: Method, payload: bytes, auth: str,
                twin: Twin) -> str:
    """Send ``payload`` to ``method`` and check status, reason and answer against the model; then the
    bridge's health, that a refused call moved nothing, and that valid calls still work. Returns the
    outcome as a label for hypothesis' statistics."""
    request = method.parse(payload)
    if len(payload) > MAX_MESSAGE_BYTES:
        want, reason = Code.RESOURCE_EXHAUSTED, ""
    elif request is None:
        want, reason = Code.INTERNAL, ""
    else:
        want, reason = _expected(method, request, auth, twin)
    before = _observe(channel)
    outcome = invoke(channel, method, payload, AUTH[auth])
    assert (outcome.code, outcome.reason) == (want, reason), \
        f"{method.path} ({len(payload)} bytes, auth {auth}): got {outcome.code.name} {outcome.reason!r} " \
        f"{outcome.details!r}, expected {want.name} {reason!r}"
    if want == Code.INTERNAL:
        assert outcome.details == UNDECODABLE
    if want == Code.OK:
        _apply_answer(method, request, outcome.messages, twin)
    elif method.name == "Reset" and reason == "bad_reset":
        twin.episode_id = None  # a refused reset leaves no episode running
    assert_serving(channel, HEALTH_SERVICES)
    code, observation = _observe(channel)
    if twin.episode_id is None:
        assert code == Code.FAILED_PRECONDITION
    else:
        assert code == Code.OK and (observation.episode_id, observation.step) == (twin.episode_id, twin.step)
        if want != Code.OK and before[1] is not None:
            assert observation.state == before[1].state, "a refused call moved the robot"
    info = invoke(channel, BY_NAME["GetInfo"], b"", AUTH["good"])
    assert info.code == Code.OK
    _wait_streams_closed(server)
    return f"{method.name}: {want.name} {reason}".rstrip()


def _wait_streams_closed(server: RobotBridgeServer) -> None:
    """Cancelled intervention streams release their slot: nothing may pile up towards the stream limit."""
    deadline = time.monotonic() + CALL_DEADLINE_S
    while server.backend.feed.subscriptions:
        assert time.monotonic() < deadline, "an intervention stream stayed open after its call was cancelled"
        time.sleep(0.005)


def _setup(channel: grpc.Channel, state: str, steps: int) -> Twin:
    """Put the robot in a known state, whatever earlier examples did: a fresh episode (seed 0), that
    episode ``steps`` steps on or over, or no episode (after a refused reset)."""
    twin = Twin()
    for method, request in ([("Reset", robot_pb2.ResetRequest(seed=0))]
                            + [("Act", None)] * (steps if state == "advanced" else 1000 if state == "over" else 0)):
        if method == "Act":
            if twin.done:
                break
            code, observation = _observe(channel)
            request = robot_pb2.ActionChunk(robot_id=ROBOT, episode_id=twin.episode_id, step=twin.step, horizon=1,
                                            action_dim=ACTION_DIM, actions=observation.state[:8], execute_steps=1)
        outcome = invoke(channel, BY_NAME[method], request.SerializeToString(), AUTH["good"])
        assert outcome.code == Code.OK, f"set-up {method}: {outcome.code.name} {outcome.details}"
        _apply_answer(BY_NAME[method], request, outcome.messages, twin)
    if state == "none":
        bad = robot_pb2.ResetRequest(options={"operator": "nobody"})
        assert invoke(channel, BY_NAME["Reset"], bad.SerializeToString(), AUTH["good"]).code == Code.INVALID_ARGUMENT
        twin.episode_id = None
    return twin


SETUPS = st.tuples(st.sampled_from(["fresh", "advanced", "advanced", "over", "none"]), st.integers(1, 20))


# ---- request strategies ------------------------------------------------------------------------------


def _rarely(common: st.SearchStrategy, rare: st.SearchStrategy) -> st.SearchStrategy:
    """``rare`` about one draw in eight."""
    return st.integers(0, 7).flatmap(lambda pick: rare if pick == 0 else common)


ROBOT_IDS = _rarely(st.one_of(st.just(ROBOT), st.just(ROBOT), st.just(""), st.text(max_size=20)),
                    st.integers(MAX_MESSAGE_BYTES - 40, MAX_MESSAGE_BYTES + 40).map(lambda n: "r" * n))
ENCODINGS = st.one_of(st.sampled_from([robot_pb2.IMAGE_ENCODING_RAW_RGB8, robot_pb2.IMAGE_ENCODING_PNG]),
                      st.integers(-(2**31), 2**31 - 1))
FLOATS = st.one_of(st.sampled_from([np.nan, np.inf, -np.inf]), st.floats(width=32))
"""NaN and infinities for sure, and any other float32."""
U32 = st.integers(0, 2**32 - 1)


@st.composite
def _chunk(draw, twin: Twin) -> robot_pb2.ActionChunk:
    """A chunk for the robot's current episode and step: mostly valid dims and values, sometimes zero,
    huge or wrong dims (with matching bytes), then up to three fields changed to edge values."""
    horizon = draw(_rarely(st.integers(1, MAX_HORIZON), st.one_of(st.integers(0, 64), U32)), label="horizon")
    action_dim = draw(_rarely(st.just(ACTION_DIM), st.one_of(st.integers(0, 6), U32)), label="action_dim")
    count = horizon * action_dim
    finite = _rarely(st.floats(-3.0, 3.0, width=32), st.floats(width=32, allow_nan=False, allow_infinity=False))
    values = draw(st.lists(finite, min_size=count, max_size=count)) if count <= 512 else []
    request = robot_pb2.ActionChunk(
        robot_id=ROBOT, episode_id=twin.episode_id or "", step=twin.step, horizon=horizon, action_dim=action_dim,
        actions=np.asarray(values, "<f4").tobytes(), execute_steps=draw(st.integers(1, max(1, min(horizon, 64)))),
        want_image=draw(_rarely(st.just(False), st.just(True))), image_encoding=draw(ENCODINGS))
    fields = ["values", "robot_id", "episode_id", "step", "actions", "execute_steps"]
    edits = draw(st.sets(st.sampled_from(fields), max_size=3))
    for field in (field for field in fields if field in edits):  # values first: an actions edit changes lengths
        if field == "values" and values:  # NaN, inf, huge and tiny float32 values, length kept
            array = np.asarray(values, "<f4")
            for index in draw(st.lists(st.integers(0, len(array) - 1), min_size=1, max_size=3)):
                array[index] = draw(FLOATS)
            request.actions = array.tobytes()
        elif field == "robot_id":
            request.robot_id = draw(ROBOT_IDS)
        elif field == "episode_id":
            request.episode_id = draw(st.text(max_size=20))
        elif field == "step":
            request.step = draw(st.one_of(st.integers(0, 70), st.integers(0, 2**64 - 1)))
        elif field == "actions":
            request.actions = draw(_rarely(st.binary(max_size=128), st.binary(min_size=MAX_MESSAGE_BYTES - 64,
                                                                              max_size=MAX_MESSAGE_BYTES + 64)))
        elif field == "execute_steps":
            request.execute_steps = draw(st.one_of(st.integers(0, 10), U32))
    return request


def _request(method: Method, twin: Twin) -> st.SearchStrategy:
    """Well-formed requests of ``method`` with edge values."""
    if method.health:
        return st.builds(method.request, **({} if method.name == "List" else {
            "service": st.one_of(st.sampled_from(HEALTH_SERVICES), st.text(max_size=40))}))
    if method.name == "GetInfo":
        return st.just(robot_pb2.InfoRequest())
    if method.name == "Reset":
        option_keys = st.one_of(st.sampled_from(["operator", "goal"]), st.text(max_size=10))
        option_values = st.one_of(st.sampled_from(["gate", "watch", *COLOURS, ""]), st.text(max_size=10))
        return st.builds(robot_pb2.ResetRequest, seed=st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
                         options=st.dictionaries(option_keys, option_values, max_size=3),
                         want_image=_rarely(st.just(False), st.just(True)), image_encoding=ENCODINGS)
    if method.name == "Observe":
        return st.builds(robot_pb2.ObserveRequest, robot_id=ROBOT_IDS,
                         want_image=_rarely(st.just(False), st.just(True)), image_encoding=ENCODINGS)
    if method.name == "StreamInterventions":
        return st.builds(robot_pb2.InterventionRequest, robot_ids=_rarely(
            st.lists(st.one_of(st.just(ROBOT), st.text(max_size=8)), max_size=3),
            st.integers(20_000, 25_000).map(lambda n: [ROBOT] * n)))  # ~140-175 KiB: above the limit
    return _chunk(twin)


@st.composite
def _mutated(draw, method: Method, twin: Twin) -> bytes:
    """A serialized valid request of ``method`` with a few bytes overwritten, inserted or cut off."""
    payload = bytearray(draw(_request(method, twin)).SerializeToString()[:4096])
    edit_bytes(draw, payload)
    return bytes(payload)


@fuzz_settings(max_examples=250, deadline_s=10)
@given(data=st.data())
def test_raw_bytes_to_every_method(bridge, data):
    server, channel = bridge
    twin = _setup(channel, *data.draw(SETUPS, label="setup"))
    method = data.draw(st.sampled_from(METHODS), label="method")
    payload = data.draw(st.one_of(st.binary(max_size=512), _mutated(method, twin)), label="payload")
    event(_check_call(server, channel, method, payload, data.draw(st.sampled_from(AUTH_CHOICES), label="auth"), twin))


@fuzz_settings(max_examples=250, deadline_s=10)
@given(data=st.data())
def test_well_formed_requests_with_edge_values(bridge, data):
    server, channel = bridge
    twin = _setup(channel, *data.draw(SETUPS, label="setup"))
    method = data.draw(st.sampled_from(METHODS), label="method")
    payload = data.draw(_request(method, twin), label="request").SerializeToString()
    event(_check_call(server, channel, method, payload, data.draw(st.sampled_from(AUTH_CHOICES), label="auth"), twin))


@fuzz_settings(max_examples=200, deadline_s=10)
@given(data=st.data())
def test_action_chunks_with_edge_values(bridge, data):
    server, channel = bridge
    twin = _setup(channel, *data.draw(SETUPS, label="setup"))
    payload = data.draw(_chunk(twin), label="chunk").SerializeToString()
    event(_check_call(server, channel, BY_NAME["Act"], payload, "good", twin))


def test_refusal_of_a_long_robot_id_reaches_the_client(bridge):
    server, _ = bridge
    with RobotClient(server.address, token=TOKEN, max_message_bytes=MAX_MESSAGE_BYTES) as client:
        with pytest.raises(BridgeError) as info:
            client.observe("r" * 20_000)
    assert (info.value.code, info.value.reason) == (Code.NOT_FOUND, "unknown_robot")


@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_oversized_request_is_refused_on_every_method(bridge, method):
    server, channel = bridge
    _check_call(server, channel, method, b"\x00" * (MAX_MESSAGE_BYTES + 1), "good", _setup(channel, "fresh", 0))


# ---- images from the wire (a hostile or broken bridge) ---------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb(height: int, width: int) -> bytes:
    """A valid RGB PNG of height x width black pixels: a few hundred KB that decode to 3 bytes a pixel."""
    packer, row = zlib.compressobj(9), b"\x00" * (1 + 3 * width)  # filter byte + pixels
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _observation(height: int, width: int, png: bytes) -> robot_pb2.Observation:
    return robot_pb2.Observation(robot_id=ROBOT, state=wire.f32_bytes(np.zeros(4)), state_dim=4, image=robot_pb2.Image(
        height=height, width=width, encoding=robot_pb2.IMAGE_ENCODING_PNG, data=png))


class HostileBridge(robot_pb2_grpc.RobotServiceServicer):
    """A RobotService whose observations carry whatever image it is given."""

    def __init__(self, observation: robot_pb2.Observation):
        self.observation = observation

    def Observe(self, request, context):
        return self.observation


@pytest.fixture
def hostile():
    """Factory: serve a HostileBridge on 127.0.0.1 and return a RobotClient to it."""
    started = []

    def serve(observation: robot_pb2.Observation) -> RobotClient:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        robot_pb2_grpc.add_RobotServiceServicer_to_server(HostileBridge(observation), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        client = RobotClient(f"127.0.0.1:{port}", deadline_s=CALL_DEADLINE_S)
        started.append((server, client))
        return client

    yield serve
    for server, client in started:
        client.close()
        server.stop(None)


def _no_decoding(monkeypatch) -> None:
    """Fail the test if PIL decodes any pixel."""
    def load(self):
        raise AssertionError(f"PIL decoded a {self.size} image")
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


@pytest.mark.parametrize(("declared", "words"), [
    ((64, 64), "image: PNG header says 8000x8000, expected 64x64"),
    ((8000, 8000), f"image: 8000x8000 exceeds the limit of {limits.MAX_IMAGE_PIXELS} pixels"),
], ids=["mislabelled", "declared"])
def test_png_bomb_from_a_bridge_is_refused_before_decoding(hostile, monkeypatch, declared, words):
    bomb = _bomb(8000, 8000)  # 192 MB of pixels
    assert len(bomb) < 1 << 20
    client = hostile(_observation(*declared, bomb))
    _no_decoding(monkeypatch)
    with pytest.raises(ValueError, match=re.escape(words)):
        client.observe(ROBOT, want_image=True, png=True)


def test_png_header_beyond_pils_own_limit_is_refused(monkeypatch):
    _no_decoding(monkeypatch)
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)  # 10^10 pixels, PIL's bomb error
    png = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IEND", b"")
    with pytest.raises(ValueError, match=r"image: (not a readable PNG|PNG header says)"):
        wire.observation_from_proto(_observation(64, 64, png))


def test_image_pixel_limit_is_exact(monkeypatch):
    monkeypatch.setattr(limits, "MAX_IMAGE_PIXELS", 64 * 64)
    for encoding in (robot_pb2.IMAGE_ENCODING_RAW_RGB8, robot_pb2.IMAGE_ENCODING_PNG):
        fits = wire.observation_from_proto(wire.observation_to_proto(_frame(64, 64), encoding))
        assert fits.image.shape == (64, 64, 3)
        with pytest.raises(ValueError, match=r"image: 64x65 exceeds the limit of 4096 pixels"):
            wire.observation_from_proto(wire.observation_to_proto(_frame(64, 65), encoding))


def test_other_image_formats_are_refused():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG")
    with pytest.raises(ValueError, match="image: not a readable PNG"):
        wire.observation_from_proto(_observation(8, 8, buffer.getvalue()))


def _frame(height: int, width: int):
    rng = np.random.default_rng(height * width)
    return wire.Observation(robot_id=ROBOT, episode_id="e", step=0, state=np.zeros(4, np.float32), instruction="",
                            done=False, success=False,
                            image=rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


VALID_PNG = wire.observation_to_proto(_frame(16, 12), robot_pb2.IMAGE_ENCODING_PNG).image.data


@st.composite
def _damaged_png(draw) -> bytes:
    """The valid PNG with one chunk's bytes (header, pixels or trailer) damaged, its CRC fixed or not,
    or the file cut or padded."""
    chunks, position = [], 8
    while position < len(VALID_PNG):
        (length,) = struct.unpack(">I", VALID_PNG[position:position + 4])
        chunks.append([VALID_PNG[position + 4:position + 8], bytearray(VALID_PNG[position + 8:position + 8 + length])])
        position += 12 + length
    kind, data = chunks[draw(st.integers(0, len(chunks) - 1))]
    edit_bytes(draw, data)
    png = b"\x89PNG\r\n\x1a\n" + b"".join(_png_chunk(k, bytes(d)) for k, d in chunks)
    if not draw(st.booleans(), label="crc fixed"):
        png = bytearray(png)
        png[draw(st.integers(8, len(png) - 1))] ^= draw(st.integers(1, 255))
    return draw(st.sampled_from([bytes(png), bytes(png)[:draw(st.integers(0, len(png)))], bytes(png) + b"\0" * 8]))


@fuzz_settings(max_examples=400, deadline_s=5)
@given(png=_damaged_png(), dims=st.sampled_from([(16, 12), (16, 12), (16, 12), (12, 16), (0, 0), (1 << 12, 1 << 12)]))
def test_damaged_pngs_decode_or_raise_value_error(png, dims):
    try:
        observation = wire.observation_from_proto(_observation(*dims, png))
    except ValueError as exc:
        assert str(exc).startswith("image: ")
        event(str(exc).split(":")[1].strip()[:30])
    else:
        assert observation.image.shape == (*dims, 3) and observation.image.dtype == np.uint8
        event("decoded")
