"""Start the service under gunicorn on a free port, as production does."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from covidxray.local_gunicorn import gunicorn_process, log_tail, wait_ready
from tests.ports import steady_port

ROOT = Path(__file__).resolve().parent.parent
#: Tries with a new port when the one picked was taken before gunicorn could bind it.
BIND_ATTEMPTS = 3


@contextmanager
def gunicorn(
    data_dir: Path, service: str = "app-keras", workers: int = 2, answer_timeout: float = 1, **env: str
) -> Iterator[str]:
    """Run `service` under gunicorn until the block ends; yield its base URL once /readyz answers 200.

    `answer_timeout`: how long each readiness probe may take (a slow first answer needs more).
    """
    for attempt in range(1, BIND_ATTEMPTS + 1):
        port = steady_port()  # chosen so that nothing else should take it before gunicorn binds it
        environ = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "COVIDXRAY_WORKERS": str(workers),
            "COVIDXRAY_DATA_DIR": str(data_dir),
            "PROMETHEUS_MULTIPROC_DIR": str(data_dir / "metrics"),
            # These servers test processes, limits and hostile input with generated pictures, which
            # the gate would refuse; tests/predictors/test_ood.py checks the gate (and the default
            # `refuse`) itself.
            "COVIDXRAY_OOD": "off",
            **env,
        }
        log = data_dir / "gunicorn.log"
        url = f"http://127.0.0.1:{port}"
        with gunicorn_process(ROOT / service, "wsgi:app", environ, log) as process:
            try:
                wait_ready(url, process, log, answer_timeout=answer_timeout)
            except RuntimeError:
                if attempt < BIND_ATTEMPTS and "Connection in use" in log_tail(log):
                    continue
                raise
            yield url
            return
