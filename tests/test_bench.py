"""The benchmark keeps working: its quick mode end to end, and the wrk script against a stub server."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench.clients import BOUNDARY, multipart, run_wrk
from bench.images import bench_images
from covidxray.predictors.runtime import DEFAULT_MODEL
from covidxray.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
MODEL = Settings.from_env().model or DEFAULT_MODEL
pytestmark = pytest.mark.slow


def test_the_three_images_are_deterministic_and_as_specified() -> None:
    images, again = bench_images(), bench_images()
    assert [(i.name, i.format, i.width, i.height) for i in images] == [
        ("png-1024", "png", 1024, 1024),
        ("jpeg-2500x2000", "jpeg", 2500, 2000),
        ("jpeg-224", "jpeg", 224, 224),
    ]
    assert [i.data for i in images] == [i.data for i in again]
    assert images[0].data[25] == 0  # PNG colour type 0: 8-bit grayscale


@pytest.mark.skipif(not MODEL.with_suffix(".onnx").is_file(), reason=f"no model at {MODEL}")
def test_quick_run_writes_results_and_tables(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--baseline", "HEAD", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    names = [i.name for i in bench_images()]
    assert list(results["compute"]) == names and results["machine"]["nproc"] >= 1
    for design in ("service", "baseline", "original"):
        assert list(results[design]["served"]) == names
        assert results[design]["cold_start_s"] > 0
        for served in results[design]["served"].values():
            for load in served["levels"].values():
                assert load["requests"] > 0 and not load["errors"]
    memory = results["service"]["memory"]
    assert len(memory["peak_rss_mb"]) == 2 and memory["soak"]["requests"] == 24
    assert results["baseline"]["ref"] == "HEAD" and list(results["stages"]) == names
    for stages in results["stages"].values():  # today's tree and HEAD's, each timed in its own process
        assert set(stages) == {"today", "HEAD"} and all(s["total_ms"] > 0 for s in stages.values())
    speed = results["speedups"]
    assert set(speed["decoders"]) == set(names) and speed["twins"]["int8_ms"] > 0
    heat = results["service"]["heatmap"]
    assert heat["p50_explain_ms"] > 0 and heat["p50_fetch_ms"] > 0
    assert len(results["targets"]) == 2 * len(names) + 8 and all(
        isinstance(t["met"], bool) for t in results["targets"]
    )
    table = (tmp_path / "RESULTS.md").read_text()
    assert "| png-1024 |" in table and "cold start" in table and "`nproc` " in table
    assert "baseline HEAD" in table and "libspng" in table and "int8 twin" in table
    assert "compute limit" in done.stdout


class _Stub(BaseHTTPRequestHandler):
    """Answers 200 to a multipart POST with a bearer token and an `image` part, 400 otherwise."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        ok = (
            self.headers["Authorization"] == "Bearer tok"
            and self.headers["Content-Type"] == f"multipart/form-data; boundary={BOUNDARY}"
            and b'name="image"' in body
            and body.endswith(f"--{BOUNDARY}--\r\n".encode())
        )
        self.send_response(200 if ok else 400)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]  # wrk resets
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make bench installs it)")
def test_wrk_script_posts_multipart_with_the_token_and_stops_at_the_limit(stub: str, tmp_path: Path) -> None:
    image = bench_images()[2]
    path = tmp_path / image.filename
    path.write_bytes(image.data)
    load = run_wrk(stub, [path, path], "tok", concurrency=2, seconds=10, max_requests=20)
    assert load.errors == {} and 20 <= load.requests < 30 and load.seconds < 10
    assert load.p50_ms <= load.p95_ms <= load.p99_ms


def test_multipart_body_holds_the_image_bytes() -> None:
    image = bench_images()[2]
    body, content_type = multipart(image)
    assert content_type.endswith(BOUNDARY) and image.data in body
