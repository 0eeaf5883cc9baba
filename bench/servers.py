"""Start a design under gunicorn as production does, time its cold start and read its workers' memory."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from covidxray.local_gunicorn import free_port, gunicorn_process, log_tail, wait_until

from .clients import multipart, post
from .images import BenchImage

ROOT = Path(__file__).resolve().parent.parent
#: design -> (working directory under the code's root, WSGI target): the service exactly as the container
#: runs it (today's, or an earlier commit's checked out as the baseline), and the original design.
DESIGNS = {"service": ("app-keras", "wsgi:app"), "original": (".", "bench.original_app:app")}
WORKERS, THREADS = 2, 4
_CLEARED = ("COVIDXRAY_RUNTIME", "COVIDXRAY_RATE_LIMIT", "COVIDXRAY_IMAGE_STORE", "COVIDXRAY_REQUEST_LOG")


@dataclass
class Served:
    """A running design: its base URL, master process and cold start."""

    design: str
    base: str
    process: subprocess.Popen[bytes]
    cold_start_s: float
    log: Path
    workers: int

    def check(self) -> None:
        """Raise, with the end of the server's log, if gunicorn is gone or lost a worker."""
        if self.process.poll() is not None or len(self.worker_pids()) != self.workers:
            raise RuntimeError(f"{self.design}: gunicorn or a worker died:\n{log_tail(self.log)}")

    def worker_pids(self) -> list[int]:
        """The gunicorn workers (children of the master)."""
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return sorted(int(pid) for pid in path.read_text().split())

    def memory_mb(self, field: str = "VmRSS") -> list[float]:
        """`field` of /proc/<pid>/status (VmRSS now, VmHWM peak) of each worker, in MB."""
        return [status_mb(pid, field) for pid in self.worker_pids()]


def status_mb(pid: int, field: str) -> float:
    """One memory field of /proc/<pid>/status in MB (10^6 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) * 1024 / 1e6, 1)
    raise KeyError(field)


def environment(data_dir: Path, port: int, secret: str, model: Path, workers: int) -> dict[str, str]:
    """The production environment with embedded storage and log under `data_dir` and rate limits off."""
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env.update(
        HOST="127.0.0.1",
        PORT=str(port),
        COVIDXRAY_ENV="development",  # production's defaults, except its rate limit
        COVIDXRAY_WORKERS=str(workers),
        COVIDXRAY_THREADS=str(THREADS),
        COVIDXRAY_DATA_DIR=str(data_dir),
        COVIDXRAY_JWT_SECRET=secret,
        COVIDXRAY_SECRET_KEY="bench-session-key-" + "s" * 32,
        PROMETHEUS_MULTIPROC_DIR=str(data_dir / "metrics"),
        TF_CPP_MIN_LOG_LEVEL="2",
        # The gate runs in full but answers 200 for the benchmark's generated films (it may flag them).
        COVIDXRAY_OOD="warn",
    )
    env["COVIDXRAY_MODEL"] = str(model)
    return env


@contextmanager
def serve(
    design: str,
    data_dir: Path,
    secret: str,
    token: str,
    probe: BenchImage,
    model: Path,
    workers: int = WORKERS,
    root: Path = ROOT,
) -> Iterator[Served]:
    """Run `design` of the code under `root` under gunicorn until the block ends; the cold start is timed
    to the first 200."""
    folder, target = DESIGNS[design]
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / f"{design}.log"
    env = environment(data_dir, port, secret, model, workers)
    if root != ROOT:
        env["PYTHONPATH"] = str(root)  # that tree's covidxray, not the one installed
    began = time.perf_counter()
    with gunicorn_process(root / folder, target, env, log) as process:
        base = f"http://127.0.0.1:{port}"
        cold = first_answer(base, probe, token, process, log) - began
        yield Served(design, base, process, round(cold, 3), log, workers)


def first_answer(
    base: str,
    probe: BenchImage,
    token: str,
    process: subprocess.Popen[bytes],
    log: Path,
    timeout: float = 120,
) -> float:
    """Post `probe` until the first 200 and return when it came (perf_counter)."""
    body, content_type = multipart(probe)

    def answered() -> bool:
        try:
            status = post(base, body, content_type, token, timeout=timeout)
        except (ConnectionRefusedError, ConnectionResetError):
            return False
        if status != 200:
            raise RuntimeError(f"the first answer was {status}:\n{log_tail(log)}")
        return True

    wait_until(answered, base, process, log, timeout, pause=0.005)
    return time.perf_counter()
