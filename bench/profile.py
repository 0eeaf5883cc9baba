"""A flame graph of the served request path: py-spy samples one gunicorn worker under load.

    .venv/bin/python -m bench.profile [--image png-1024] [--seconds 20] [--out bench/flame-png-1024.svg]

The service runs as `make bench` runs it (2 workers × 4 threads, embedded store and log); a Python
client posts the image at concurrency 2 while py-spy (which needs ptrace: root, or
kernel.yama.ptrace_scope 0) records the worker's Python and native frames.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from covidxray.predictors.runtime import DEFAULT_MODEL
from covidxray.settings import Settings
from covidxray.web.auth import issue_token

from .clients import run_python
from .images import bench_images
from .run import SECRET
from .servers import serve

HERE = Path(__file__).resolve().parent


def record(image_name: str, seconds: int, out: Path, rate: int) -> None:
    """Serve, load, and write py-spy's flame graph of one worker to `out`."""
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy is missing: make install puts it in the virtual environment")
    image = next(i for i in bench_images() if i.name == image_name)
    token = issue_token(Settings(jwt_keys={"": SECRET}), "bench", ttl=3600)
    with (
        tempfile.TemporaryDirectory(prefix="covidxray-profile-") as tmp,
        serve("service", Path(tmp), SECRET, token, image, DEFAULT_MODEL) as served,
    ):
        run_python(served.base, image, token, 2, 40)  # warm-up
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                run_python(served.base, image, token, 2, 20)

        loader = threading.Thread(target=load)
        loader.start()
        try:
            command = [py_spy, "record", "--pid", str(served.worker_pids()[0]), "--native"]
            command += ["--rate", str(rate), "--duration", str(seconds), "--output", str(out)]
            subprocess.run([*command, "--format", "flamegraph"], check=True)
        finally:
            stop.set()
            loader.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="png-1024", choices=[i.name for i in bench_images()])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    record(args.image, args.seconds, args.out or HERE / f"flame-{args.image}.svg", args.rate)


if __name__ == "__main__":
    main()
