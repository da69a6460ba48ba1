"""Ports chosen for servers that bind them later: outside the kernel's ephemeral range."""

import socket

import pytest

from fleetloop import ports


def test_free_ports_lie_between_rays_worker_ports_and_the_ephemeral_range_and_bind():
    start = ports.ephemeral_start()
    assert start == int(ports.EPHEMERAL_RANGE_FILE.read_text().split()[0])
    for count in (1, 3):
        base = ports.free_port(count=count)
        assert ports.FIRST_PORT <= base and base + count <= start
        for port in range(base, base + count):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port))


def test_a_taken_port_does_not_bind():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert not ports.binds("127.0.0.1", sock.getsockname()[1])


def test_no_free_run_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(ports, "binds", lambda host, port: False)
    with pytest.raises(OSError, match=r"no 2 consecutive free port\(s\) on 127.0.0.1 in 20000\.\.\d+ .*set the ports"):
        ports.free_port(count=2)
