"""A local stand-in for Vertex AI and legacy AutoML image prediction, answering with our own model.

    python -m covidxray.automl_standin.emulator [--host H] [--port 8091] [--labels COVID-19,PNEUMONIA,NORMAL]
        [--model FILE.keras] [--mode MODE] [--delay SECONDS] [--code STATUS]

Plain gRPC speaking `google.cloud.aiplatform.v1.PredictionService/Predict` (for any endpoint
`projects/P/locations/L/endpoints/E`) and `google.cloud.automl.v1.PredictionService/Predict` (any
`projects/P/locations/L/models/M`); it scores with the shipped model (onnxruntime, never TensorFlow)
under the display names of covid, pneumonia, normal (`--labels`), and honours `confidenceThreshold`
/ `maxPredictions` (defaults 0, 10) and `score_threshold` (default 0.5) like the real services.

Misbehaviour, for tests: MODE `ok`, `unavailable`, `slow` (answers after DELAY s), `unknown-labels`
(names LABEL_0..2), `missing-class` (leaves out `drop`, by default the last name) or `error` (gRPC
status CODE, e.g. NOT_FOUND); at start, or live through the `covidxray.AutoMLEmulator/Control`
method: `control(address, mode="unavailable", times=2)` (`times`: only the next N calls; 0: until
changed), which answers the state with the calls counted per protocol.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from covidxray.automl_standin.server import CONTROL_METHOD, DISPLAY_NAMES, MODES, Emulator

DEFAULT_PORT = 8091
MAX_MESSAGE = 32 * 1024 * 1024


def serve(
    host: str = "127.0.0.1", port: int = DEFAULT_PORT, labels: Any = DISPLAY_NAMES, **options: Any
) -> Emulator:
    """Start the stand-in on `host:port` (0: a free port) in background threads; return it (`.address`)."""
    emulator = Emulator(labels=labels, **options)
    server = grpc.server(
        ThreadPoolExecutor(max_workers=8, thread_name_prefix="automl-standin"),
        handlers=emulator.handlers(),
        options=[("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.so_reuseport", 0)],
    )
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if not bound:
        raise OSError(f"cannot listen on {host}:{port}")
    server.start()
    emulator.server, emulator.address = server, f"{host}:{bound}"
    return emulator


def control(address: str, timeout: float = 5.0, **changes: Any) -> dict[str, Any]:
    """Change a running stand-in's behaviour (see the module's docstring); return its state."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(CONTROL_METHOD)
        return json.loads(call(json.dumps(changes).encode(), timeout=timeout))  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> None:
    """Run the stand-in until interrupted."""
    parser = argparse.ArgumentParser(prog="covidxray automl-emulator", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--labels", default=",".join(DISPLAY_NAMES), help="display names of covid,pneumonia,normal"
    )
    parser.add_argument("--model", type=Path, default=None, help="the .keras model (its ONNX twin is run)")
    parser.add_argument("--mode", choices=MODES, default="ok")
    parser.add_argument("--delay", type=float, default=2.0, help="seconds, for --mode slow")
    parser.add_argument("--code", default="NOT_FOUND", help="gRPC status, for --mode error")
    args = parser.parse_args(argv)
    emulator = serve(**vars(args))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print(f"AutoML stand-in (Vertex AI and legacy AutoML Predict) on {emulator.address}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        done.wait()
    emulator.stop()


if __name__ == "__main__":
    main()
