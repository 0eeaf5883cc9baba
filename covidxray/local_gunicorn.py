"""Run a service under gunicorn on a free local port and wait until it answers.

For the tests, the benchmark (`bench`) and the soak (`soak/run.py`); the service itself never
imports it. The caller builds the environment: this module knows only how to start, poll and stop.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

#: How much of the end of the server's log a failure shows.
LOG_TAIL = 4000
#: Seconds gunicorn gets to stop after SIGTERM: its graceful timeout (COVIDXRAY_TIMEOUT) by default.
STOP_TIMEOUT = 30


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(log: Path) -> str:
    """The end of the server's log, to show with a failure."""
    return log.read_text(errors="replace")[-LOG_TAIL:]


@contextmanager
def gunicorn_process(
    cwd: Path, target: str, env: Mapping[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `gunicorn -c python:covidxray.gunicorn_conf target` in `cwd` until the block ends.

    Its output (both streams) goes to `log`; at the end it is terminated, then killed if it has
    not stopped after STOP_TIMEOUT seconds.
    """
    command = [sys.executable, "-m", "gunicorn", "-c", "python:covidxray.gunicorn_conf", target]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until(
    answered: Callable[[], bool],
    url: str,
    process: subprocess.Popen[bytes],
    log: Path,
    timeout: float,
    pause: float = 0.1,
) -> None:
    """Call `answered` every `pause` s until it returns True, failing early if the server died.

    Raises:
        RuntimeError: gunicorn exited (with the end of its log).
        TimeoutError: `answered` was not True within `timeout` s (with the end of the log).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}:\n{log_tail(log)}")
        if answered():
            return
        time.sleep(pause)
    raise TimeoutError(f"{url} not ready after {timeout} s:\n{log_tail(log)}")


def wait_ready(
    url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60, answer_timeout: float = 1
) -> None:
    """Poll `url`/readyz until it answers 200 (each try waits `answer_timeout` s at most)."""

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=answer_timeout) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):  # HTTPError (a 503) included
            return False

    wait_until(ready, url, process, log, timeout)
