"""Gunicorn settings from the environment (`gunicorn -c python:covidxray.gunicorn_conf`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8080')}"
workers = int(os.environ.get("COVIDXRAY_WORKERS", "2"))
threads = int(os.environ.get("COVIDXRAY_THREADS", "4"))
timeout = int(os.environ.get("COVIDXRAY_TIMEOUT", "30"))
graceful_timeout = timeout
worker_class = "gthread"
accesslog = "-"
# The path without its query string: a token or identifier sent there never reaches the log.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(D)sus'
errorlog = "-"
forwarded_allow_ips = "*" if int(os.environ.get("COVIDXRAY_TRUSTED_PROXIES", "0") or 0) else "127.0.0.1"
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="covidxray-metrics-"))
# One BLAS thread per worker thread, set before any worker imports numpy: the gate's matrix products
# (1280 features) would otherwise start BLAS thread pools that fight the other workers for the cores
# (measured: jpeg-224 at concurrency 4, 28 req/s with OpenBLAS's default threads, 59 with one).
for _blas_threads in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_blas_threads, "1")


def on_starting(server: Any) -> None:
    """Start every run with empty metric files."""
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
