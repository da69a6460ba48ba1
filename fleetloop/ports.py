"""Ports a server can bind a moment after they were chosen.

A port the kernel hands out for ``bind(0)`` comes from its ephemeral range, the range outgoing
connections draw their source ports from. Between choosing such a port and a server binding it
(often in another process, seconds later), any client connection on the machine may take it: a
Ray worker's connection once took the WeightService's port 10 s after a test had chosen it.
``free_port`` draws from the ports between Ray's worker ports and the ephemeral range instead,
which nothing takes unasked, and checks that they bind now.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
FIRST_PORT = 20000
"""Above Ray's worker ports (its default max_worker_port is 19999) and the well-known servers'."""
TRIES = 200

_rng = random.SystemRandom()  # independent of any seeded global random: two processes must not agree


def ephemeral_start() -> int:
    """The first port of the kernel's ephemeral range (32768 where it cannot be read)."""
    try:
        return int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def binds(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", count: int = 1) -> int:
    """The first of ``count`` consecutive ports that bind on ``host`` now, outside the ephemeral range.

    Raises:
        OSError: no such run of ports was found (the message says which range was tried).
    """
    low, high = FIRST_PORT, ephemeral_start() - count
    if high < low:  # an unusual ephemeral range: fall back to the kernel's choice
        low, high = 1024, 65535 - count
    for _ in range(TRIES):
        base = _rng.randint(low, high)
        if all(binds(host, port) for port in range(base, base + count)):
            return base
    raise OSError(f"no {count} consecutive free port(s) on {host} in {low}..{high + count - 1} after {TRIES} tries: "
                  "free some, or set the ports explicitly")
