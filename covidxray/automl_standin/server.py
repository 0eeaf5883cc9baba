"""The stand-in's state: our model under AutoML display names, and the misbehaviour asked for."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
from google.cloud import automl_v1
from google.cloud.aiplatform_v1.types import PredictRequest, PredictResponse

from covidxray.errors import ApiError, UnsupportedType
from covidxray.imaging.prepare import prepare, sniff
from covidxray.predictors import automl_wire as wire
from covidxray.predictors.calibration import softmax
from covidxray.predictors.runtime import DEFAULT_MODEL, load_runtime

DISPLAY_NAMES = ("COVID-19", "PNEUMONIA", "NORMAL")
MODES = ("ok", "unavailable", "slow", "unknown-labels", "missing-class", "error")
CONTROL_METHOD = "/covidxray.AutoMLEmulator/Control"
ACCEPTED = ("png", "jpeg", "gif")


@dataclass
class Behaviour:
    """How the stand-in answers."""

    mode: str = "ok"
    delay: float = 2.0
    code: str = "NOT_FOUND"
    drop: str | None = None
    times: int = 0


class Emulator:
    """The stand-in: the model, its display names, the behaviour asked for, and the server."""

    def __init__(self, labels: tuple[str, ...] = DISPLAY_NAMES, model: Path | None = None, **behaviour: Any):
        self.runtime = load_runtime(model or os.environ.get("COVIDXRAY_MODEL") or DEFAULT_MODEL)
        self.labels: tuple[str, ...] = ()
        self.behaviour = Behaviour()
        self.calls = {"vertex": 0, "legacy": 0}
        self.server: grpc.Server | None = None
        self.address = ""
        self._lock = threading.Lock()
        self.configure(labels=labels, **behaviour)

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change the display names (`labels`) or the behaviour; reset the call counts with `reset=True`."""
        with self._lock:
            if changes.pop("reset", False):
                self.calls = dict.fromkeys(self.calls, 0)
            labels = changes.pop("labels", None)
            if labels is not None:
                labels = tuple(labels.split(",") if isinstance(labels, str) else labels)
                if len(labels) != len(self.runtime.info.labels):
                    raise ValueError(
                        f"labels needs {len(self.runtime.info.labels)} display names, got {labels}"
                    )
                self.labels = labels
            behaviour = Behaviour(**{**asdict(self.behaviour), **changes})
            if behaviour.mode not in MODES or behaviour.code not in grpc.StatusCode.__members__:
                raise ValueError(f"mode must be one of {MODES} and code a gRPC status name")
            self.behaviour = behaviour
            return self._state()

    def state(self) -> dict[str, Any]:
        """The display names, behaviour and call counts."""
        with self._lock:
            return self._state()

    def _state(self) -> dict[str, Any]:
        return {"labels": list(self.labels), **asdict(self.behaviour), "calls": dict(self.calls)}

    def _begin(self, protocol: str, context: grpc.ServicerContext) -> str:
        """Count the call and misbehave as asked; return the mode that applies to it."""
        with self._lock:
            self.calls[protocol] += 1
            behaviour = self.behaviour
            if behaviour.mode != "ok" and behaviour.times > 0:
                behaviour.times -= 1
                if behaviour.times == 0:
                    self.behaviour = Behaviour(**{**asdict(behaviour), "mode": "ok"})
        if behaviour.mode == "unavailable":
            context.abort(grpc.StatusCode.UNAVAILABLE, "the stand-in plays unavailable")
        if behaviour.mode == "error":
            context.abort(grpc.StatusCode[behaviour.code], f"the stand-in plays {behaviour.code}")
        if behaviour.mode == "slow":
            end = time.monotonic() + behaviour.delay
            while time.monotonic() < end and context.is_active():
                time.sleep(0.01)
        return behaviour.mode

    def scores(self, content: bytes, mode: str, context: grpc.ServicerContext) -> wire.Scores:
        """Every class's probability under its display name, sorted best first."""
        info = self.runtime.info
        try:
            if sniff(content) not in ACCEPTED:  # like AutoML, which takes no DICOM
                raise UnsupportedType(f"AutoML image models take {', '.join(ACCEPTED)} (and BMP, ICO, TIFF)")
            prepared = prepare(content, info.input_size)
        except ApiError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unusable image: {exc.message}")
        logits, _ = self.runtime.run(prepared.tensor[None])
        probs = softmax(logits, info.temperature)[0]
        names = [f"LABEL_{i}" for i in range(len(probs))] if mode == "unknown-labels" else list(self.labels)
        scores = [(name, float(p)) for name, p in zip(names, probs, strict=True)]
        if mode == "missing-class":
            drop = (self.behaviour.drop or self.labels[-1]).casefold()
            scores = [(name, p) for name, p in scores if name.casefold() != drop]
        return sorted(scores, key=lambda pair: -pair[1])

    def vertex_predict(self, request: PredictRequest, context: grpc.ServicerContext) -> Any:
        """Vertex AI's Predict for an AutoML image classification endpoint."""
        resource = _resource(request.endpoint, "endpoints", context)
        try:
            contents, parameters = wire.read_vertex_request(request)
        except (KeyError, ValueError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"instances must be {{'content': base64}}: {exc}")
        if not contents:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no instances")
        mode = self._begin("vertex", context)
        threshold = float(parameters.get("confidenceThreshold", 0.0))
        top = int(parameters.get("maxPredictions", 10))
        predictions = [
            [(n, p) for n, p in self.scores(content, mode, context) if p >= threshold][:top]
            for content in contents
        ]
        model = f"projects/{resource.project}/locations/{resource.location}/models/standin"
        info = self.runtime.info
        return wire.vertex_response(predictions, model, f"{info.name}-standin", info.version)

    def legacy_predict(self, request: automl_v1.PredictRequest, context: grpc.ServicerContext) -> Any:
        """Legacy AutoML's Predict for an image classification model."""
        _resource(request.name, "models", context)
        content = request.payload.image.image_bytes
        if not content:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "payload.image.image_bytes is empty")
        mode = self._begin("legacy", context)
        threshold = float(request.params.get("score_threshold", "0.5"))
        return wire.legacy_response(
            [(n, p) for n, p in self.scores(content, mode, context) if p >= threshold]
        )

    def control(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """Change the behaviour from a JSON object of `configure` arguments; answer the state."""
        try:
            return json.dumps(self.configure(**json.loads(request or b"{}"))).encode()
        except (TypeError, ValueError) as exc:
            context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            context.set_details(str(exc))
            return b""

    def handlers(self) -> tuple[grpc.GenericRpcHandler, ...]:
        """The generic handlers of the three services, with the libraries' own message classes."""
        vertex = grpc.unary_unary_rpc_method_handler(
            self.vertex_predict,
            request_deserializer=PredictRequest.deserialize,
            response_serializer=PredictResponse.serialize,
        )
        legacy = grpc.unary_unary_rpc_method_handler(
            self.legacy_predict,
            request_deserializer=automl_v1.PredictRequest.deserialize,
            response_serializer=automl_v1.PredictResponse.serialize,
        )
        control = grpc.unary_unary_rpc_method_handler(self.control)
        routes = ((wire.VERTEX_METHOD, vertex), (wire.LEGACY_METHOD, legacy), (CONTROL_METHOD, control))
        return tuple(
            grpc.method_handlers_generic_handler(
                path.lstrip("/").rpartition("/")[0], {path.rpartition("/")[2]: h}
            )
            for path, h in routes
        )

    def stop(self) -> None:
        """Stop serving (calls in flight are cancelled)."""
        if self.server is not None:
            self.server.stop(grace=None).wait()


def _resource(name: str, kind: str, context: grpc.ServicerContext) -> wire.Resource:
    """The resource named in a request, or INVALID_ARGUMENT."""
    try:
        resource = wire.Resource.parse(name)
    except ValueError as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if resource.kind != kind:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"this service predicts for {kind}, not {name}")
    return resource
