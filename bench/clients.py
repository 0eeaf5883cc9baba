"""Load generators: `wrk` with post.lua (full runs) and a small threaded Python client (quick runs)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from .images import BenchImage

LUA = Path(__file__).resolve().parent / "post.lua"
BOUNDARY = "covidxray-bench-boundary"
ROUTE = "/api/v1/predict"


@dataclass
class Load:
    """What one load run measured."""

    client: str
    concurrency: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def multipart(image: BenchImage) -> tuple[bytes, str]:
    """The multipart/form-data body posting `image` as the `image` field, and its content type."""
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="{image.filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + image.data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={BOUNDARY}"


def wrk_path() -> str:
    """The `wrk` executable, or a clear error saying how to get it."""
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError(
            "wrk is missing: `apt-get install wrk` (make bench does it as root), or use --quick"
        )
    return path


def run_wrk(
    base: str,
    files: list[Path],
    token: str,
    concurrency: int,
    seconds: float,
    max_requests: int | None = None,
    timeout_s: int = 60,
) -> Load:
    """Post `files` in turn at `concurrency` open connections (one wrk thread) for `seconds`."""
    env = {**os.environ, "BENCH_TOKEN": token}
    if max_requests is not None:
        env["BENCH_MAX_REQUESTS"] = str(max_requests)
    command = [wrk_path(), "-t1", f"-c{concurrency}", f"-d{seconds:g}s", f"--timeout={timeout_s}s"]
    command += ["-s", str(LUA), base + ROUTE, "--", *map(str, files)]
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stderr is not None
        for message in proc.stderr:  # ends at wrk's exit, or at the script's limit
            if message.startswith("limit reached"):
                proc.send_signal(signal.SIGINT)  # wrk stops at once and still reports
                break
        stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {stderr}")
    line = next(raw for raw in reversed(stdout.splitlines()) if raw.startswith("{"))
    out = json.loads(line)
    duration = out["duration_us"] / 1e6
    return Load(
        client="wrk",
        concurrency=concurrency,
        requests=out["requests"],
        seconds=round(duration, 2),
        rps=round(out["requests"] / duration, 1),
        p50_ms=round(out["p50_us"] / 1000, 1),
        p95_ms=round(out["p95_us"] / 1000, 1),
        p99_ms=round(out["p99_us"] / 1000, 1),
        errors={k: v for k, v in out["errors"].items() if v},
    )


def post(base: str, body: bytes, content_type: str, token: str, timeout: float = 60) -> int:
    """One POST on a fresh connection; return the status."""
    parsed = urlparse(base)
    conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port, timeout=timeout)
    try:
        conn.request("POST", ROUTE, body, {"Authorization": f"Bearer {token}", "Content-Type": content_type})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def run_python(
    base: str, image: BenchImage, token: str, concurrency: int, total: int, explain: bool = False
) -> Load:
    """Post `image` `total` times from `concurrency` threads, each on its own keep-alive connection
    (with `explain=1`, asking for the heatmap too, when `explain`)."""
    route = ROUTE + ("?explain=1" if explain else "")
    body, content_type = multipart(image)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type}
    parsed = urlparse(base)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()

    def client(n: int) -> None:
        conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port, timeout=120)
        for _ in range(n):
            began = time.perf_counter()
            try:
                conn.request("POST", route, body, headers)
                response = conn.getresponse()
                response.read()
            except OSError as exc:  # counted like wrk's socket errors; the caller checks the server
                with lock:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                conn.close()
                continue
            with lock:
                latencies.append(time.perf_counter() - began)
                if response.status != 200:
                    errors["status"] = errors.get("status", 0) + 1
        conn.close()

    shares = [total // concurrency + (i < total % concurrency) for i in range(concurrency)]
    threads = [threading.Thread(target=client, args=(n,)) for n in shares if n]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    p50, p95, p99 = np.percentile(np.array(latencies or [0.0]) * 1000, [50, 95, 99])
    return Load(
        "python",
        concurrency,
        len(latencies),
        round(wall, 2),
        round(len(latencies) / wall, 1),
        round(float(p50), 1),
        round(float(p95), 1),
        round(float(p99), 1),
        errors,
    )
