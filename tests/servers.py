"""Start the service under gunicorn on a free port, as production does."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def gunicorn(data_dir: Path, service: str = "app-keras", workers: int = 2, **env: str) -> Iterator[str]:
    """Run `service` under gunicorn until the block ends; yield its base URL once /readyz answers 200."""
    port = free_port()
    environ = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "COVIDXRAY_WORKERS": str(workers),
        "COVIDXRAY_DATA_DIR": str(data_dir),
        "PROMETHEUS_MULTIPROC_DIR": str(data_dir / "metrics"),
        **env,
    }
    command = [sys.executable, "-m", "gunicorn", "-c", "python:covidxray.gunicorn_conf", "wsgi:app"]
    log = (data_dir / "gunicorn.log").open("wb")
    process = subprocess.Popen(command, cwd=ROOT / service, env=environ, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, data_dir / "gunicorn.log")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    """Poll /readyz until it answers 200, failing early if the server died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}:\n{log.read_text()}")
        try:
            if requests.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout} s:\n{log.read_text()}")
