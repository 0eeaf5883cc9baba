"""Ports for servers that the tests start and that bind them some time after they are chosen."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

from covidxray.local_gunicorn import free_port

#: The ports handed out in this process, never handed out twice.
_HANDED: set[int] = set()
#: The lowest port drawn from.
LOWEST = 20000


def steady_port() -> int:
    """A port that is free now and stays free until a server binds it, even seconds later.

    It comes from below the kernel's ephemeral range: outgoing connections and `bind(0)` (in this
    process, the other test worker or anything else) take their ports from that range only. Each
    pytest-xdist worker draws from its own share of it, so two workers never pick the same port.
    Where the range starts too low to leave room, any free port.
    """
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low = int(ephemeral.read_text().split()[0]) if ephemeral.exists() else 0
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % workers
    share = max(0, low - LOWEST) // workers
    ports = range(LOWEST + worker * share, LOWEST + (worker + 1) * share)
    draw = random.SystemRandom()  # not the seedable module state: the other test worker may share it
    for port in draw.sample(ports, min(100, len(ports))):
        if port in _HANDED:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED.add(port)
        return port
    return free_port()
