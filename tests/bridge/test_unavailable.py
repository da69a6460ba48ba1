"""A bridge that is gone or frozen raises BridgeUnavailable within the deadline, and the same
client works again once the bridge is back; `fleetloop robot-bridge` serves, answers health
checks and exits cleanly on signals."""

import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fleetloop.actors.bridge import BridgeUnavailable, MujocoTwinBackend, RobotBridgeServer, RobotClient
from fleetloop.protos.security import open_channel

pytestmark = pytest.mark.timeout(60)

FLEETLOOP = str(Path(sys.executable).parent / "fleetloop")
STARTUP_S = 30.0


def _raises_unavailable_within(call, limit_s: float) -> None:
    started = time.monotonic()
    with pytest.raises(BridgeUnavailable):
        call()
    assert time.monotonic() - started < limit_s


def test_stopped_bridge_is_unavailable_then_back_on_the_same_port(serve):
    server, client = serve()
    port = server.port
    client.reset(seed=0)
    server.stop(grace=None)
    _raises_unavailable_within(lambda: client.observe("arm_0"), client.deadline_s)
    _raises_unavailable_within(lambda: client.reset(), client.deadline_s)
    again = RobotBridgeServer(MujocoTwinBackend("reach"), port=port)
    try:
        assert again.start() == port
        obs = client.reset(seed=0)["arm_0"]  # the next call reconnects
        assert client.act(obs, np.tile(obs.state[:2], (2, 1))).executed_steps == 2
    finally:
        again.stop(grace=None)


def _wait_stopped(pid: int) -> None:
    """Wait until the kernel has stopped every thread of ``pid`` (SIGSTOP lands asynchronously)."""
    deadline = time.monotonic() + 5
    tasks = Path(f"/proc/{pid}/task")
    while time.monotonic() < deadline:
        try:
            states = [(task / "stat").read_text().rsplit(")", 1)[1].split()[0] for task in tasks.iterdir()]
        except FileNotFoundError:  # a thread ended while we looked
            continue
        if all(state in "Tt" for state in states):
            return
        time.sleep(0.01)
    pytest.fail(f"process {pid} did not stop")


def _start_cli(*args: str) -> tuple[subprocess.Popen, str]:
    """Start `fleetloop robot-bridge` on a free port; returns the process and its address."""
    proc = subprocess.Popen([FLEETLOOP, "robot-bridge", "--backend", "mujoco-twin", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], STARTUP_S)
    if not ready:
        proc.kill()
        pytest.fail(f"robot-bridge printed no address within {STARTUP_S} s: {proc.communicate()[1]}")
    line = proc.stdout.readline()
    assert "serving on 127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, line.rsplit(" ", 1)[-1].strip()


def test_cli_bridge_serves_freezes_and_exits_0_on_sigterm():
    proc, address = _start_cli()
    try:
        with open_channel(address, []) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        client = RobotClient(address, deadline_s=1.0)
        obs = client.reset(seed=0)["arm_0"]
        proc.send_signal(signal.SIGSTOP)  # frozen: the connection stays open, nothing answers
        try:
            _wait_stopped(proc.pid)
            _raises_unavailable_within(lambda: client.observe("arm_0"), 2.0)
        finally:
            proc.send_signal(signal.SIGCONT)
        assert client.observe("arm_0").episode_id == obs.episode_id
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_bridge_exits_130_on_ctrl_c():
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        pytest.skip("SIGINT is ignored here (started in the background), and the bridge would inherit that")
    proc, _ = _start_cli()
    try:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_bridge_usage_errors_name_the_choices():
    result = subprocess.run([FLEETLOOP, "robot-bridge", "--backend", "hardware"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "invalid choice: 'hardware' (choose from 'mujoco-twin')" in result.stderr
    result = subprocess.run([FLEETLOOP, "robot-bridge", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "RobotService" in result.stdout and "SIGTERM" in result.stdout
