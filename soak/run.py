"""Soak the service: gunicorn as in production, locust headless, worker memory at start and end.

    python soak/run.py [--users 20] [--duration 60] [--workers 2]

Starts the Keras service under gunicorn on a free port (rate limits off, a temporary data
folder), runs soak/locustfile.py in a locust subprocess, then prints the answers by request and
status, the unexpected ones (must be 0) and each worker's resident memory at the start, once
warm (WARM_AFTER seconds into the run: model runtime arenas allocated) and at the end.
Exits 1 when any answer was unexpected, a worker was replaced, or locust failed.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_UPLOAD_MB = 2  # small, so that the over-the-limit requests stay cheap
WARM_AFTER = 10  # seconds


def workers_of(master: int) -> list[int]:
    """PIDs of the processes whose parent is `master` (gunicorn's workers)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in parentheses may hold spaces
        if ppid == master:
            children.append(int(entry.name))
    return sorted(children)


def rss_mib(pid: int) -> float:
    """Resident memory of `pid` in MiB, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    """Run the soak; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--spawn-rate", type=float, default=20)
    parser.add_argument("--duration", type=int, default=60, help="seconds")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from covidxray.local_gunicorn import free_port, gunicorn_process, wait_ready
    from covidxray.settings import Settings
    from covidxray.web.auth import issue_token

    data_dir = Path(tempfile.mkdtemp(prefix="covidxray-soak-"))
    secret = secrets.token_urlsafe(48)
    port = free_port()
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "COVIDXRAY_WORKERS": str(args.workers),
        "COVIDXRAY_ENV": "development",
        "COVIDXRAY_RATE_LIMIT": "",  # off: development's default
        "COVIDXRAY_DATA_DIR": str(data_dir),
        "COVIDXRAY_JWT_SECRET": secret,
        "COVIDXRAY_MAX_UPLOAD_MB": str(MAX_UPLOAD_MB),
        "PROMETHEUS_MULTIPROC_DIR": str(data_dir / "metrics"),
        "COVIDXRAY_OOD": "warn",  # the gate runs in full; generated films are flagged, not refused
    }
    for name in ("COVIDXRAY_JWT_KEYS", "COVIDXRAY_JWT_ISSUER", "COVIDXRAY_JWT_AUDIENCE"):
        env.pop(name, None)
    log = data_dir / "gunicorn.log"
    url = f"http://127.0.0.1:{port}"
    with gunicorn_process(ROOT / "app-keras", "wsgi:app", env, log) as server:
        try:
            wait_ready(url, server, log, timeout=120)
        except (RuntimeError, TimeoutError) as error:
            raise SystemExit(str(error)) from None
        time.sleep(1)  # let every worker finish loading
        before = {pid: rss_mib(pid) for pid in workers_of(server.pid)}
        report = data_dir / "soak.json"
        token = issue_token(Settings(jwt_keys={"": secret}), "soak", ttl=args.duration + 600)
        locust = [
            sys.executable, "-m", "locust", "-f", str(ROOT / "soak" / "locustfile.py"), "--headless",
            "--users", str(args.users), "--spawn-rate", str(args.spawn_rate),
            "--run-time", f"{args.duration}s", "--host", url, "--only-summary", "--stop-timeout", "10",
        ]  # fmt: skip
        print(
            f"soak: {args.users} users for {args.duration} s against {url} ({args.workers} workers)",
            flush=True,
        )
        locust_env = {
            **env,
            "SOAK_TOKEN": token,
            "SOAK_REPORT": str(report),
            "SOAK_MAX_UPLOAD_MB": str(MAX_UPLOAD_MB),
        }
        started = time.monotonic()
        runner = subprocess.Popen(locust, env=locust_env, cwd=ROOT)
        warm: dict[int, float] = {}
        while runner.poll() is None:
            if not warm and time.monotonic() - started >= min(WARM_AFTER, args.duration / 2):
                warm = {pid: rss_mib(pid) for pid in workers_of(server.pid)}
            time.sleep(0.5)
        locust_rc = runner.returncode
        after = {pid: rss_mib(pid) for pid in workers_of(server.pid)}

    counts = json.loads(report.read_text()) if report.exists() else {"answers": [], "unexpected": []}
    print("\nanswers by request and status:")
    for row in counts["answers"]:
        print(f"  {row['count']:>7}  {row['status']}  {row['name']}")
    unexpected = sum(row["count"] for row in counts["unexpected"])
    print(f"\nunexpected statuses: {unexpected}")
    for row in counts["unexpected"]:
        print(f"  {row['count']:>7}  {row['status']}  {row['name']}")
    print(f"\nworker RSS (MiB):   start  warm ({WARM_AFTER} s)       end   end - warm")
    for pid in sorted(before.keys() | after.keys()):
        start, hot, end = before.get(pid), warm.get(pid), after.get(pid)
        change = f"{end - hot:+8.1f}" if hot is not None and end is not None else "  (replaced)"
        print(f"  pid {pid:>7}  {_mib(start)}     {_mib(hot)}  {_mib(end)}     {change}")
    replaced = before.keys() != after.keys()
    if replaced:
        print("workers were replaced during the soak (crash or timeout)")
    failed = bool(unexpected or replaced or locust_rc != 0 or not counts["answers"])
    if failed:
        print(f"gunicorn log and data kept in {data_dir}")
    else:
        shutil.rmtree(data_dir, ignore_errors=True)
    return 1 if failed else 0


def _mib(value: float | None) -> str:
    return f"{value:8.1f}" if value is not None else "       -"


if __name__ == "__main__":
    sys.exit(main())
