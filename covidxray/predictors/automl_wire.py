"""Wire formats of Vertex AI and legacy AutoML image classification, shared by the client and the stand-in.

Vertex AI (`projects/P/locations/L/endpoints/E`) is the primary path. The legacy AutoML API
(`projects/P/locations/L/models/M`) no longer answers for image models since 31 March 2024;
its path is kept for the local stand-in and for completeness.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from dataclasses import dataclass
from typing import Any

import grpc
from google.cloud import automl_v1
from google.cloud.aiplatform_v1.services.prediction_service import PredictionServiceClient as VertexClient
from google.cloud.aiplatform_v1.services.prediction_service.transports import (
    PredictionServiceGrpcTransport as VertexTransport,
)
from google.cloud.aiplatform_v1.types import PredictRequest, PredictResponse
from google.cloud.automl_v1.services.prediction_service import PredictionServiceClient as LegacyClient
from google.cloud.automl_v1.services.prediction_service.transports import (
    PredictionServiceGrpcTransport as LegacyTransport,
)
from google.protobuf import json_format, struct_pb2

from covidxray.labels import LABELS
from covidxray.predictors.base import Outcome
from covidxray.settings import ConfigError

VERTEX_METHOD = "/google.cloud.aiplatform.v1.PredictionService/Predict"
LEGACY_METHOD = "/google.cloud.automl.v1.PredictionService/Predict"
MAX_PREDICTIONS = 3  # every class of a three-class model
_NAME = re.compile(r"projects/([^/]+)/locations/([^/]+)/(endpoints|models)/([^/]+)")

Scores = list[tuple[str, float]]


@dataclass(frozen=True)
class Resource:
    """A Vertex AI endpoint or a legacy AutoML model, parsed from its resource name."""

    name: str
    project: str
    location: str
    kind: str  # endpoints | models
    id: str

    @classmethod
    def parse(cls, name: str) -> Resource:
        """Parse `projects/P/locations/L/endpoints/E` or `projects/P/locations/L/models/M`."""
        match = _NAME.fullmatch(name.strip())
        if match is None:
            raise ValueError(
                f"{name!r} is neither projects/P/locations/L/endpoints/E nor projects/P/locations/L/models/M"
            )
        return cls(match.group(0), *match.groups())

    @property
    def vertex(self) -> bool:
        """True for a Vertex AI endpoint, False for a legacy AutoML model."""
        return self.kind == "endpoints"

    @property
    def api_host(self) -> str:
        """Google's API endpoint serving this resource (regional for Vertex AI)."""
        if self.vertex:
            return f"{self.location}-aiplatform.googleapis.com"
        return "eu-automl.googleapis.com" if self.location == "eu" else "automl.googleapis.com"


@dataclass
class Answer:
    """One prediction: (display name, score) pairs and the model that made them."""

    scores: Scores
    model: str = ""
    version: str = ""


def is_loopback(api_endpoint: str) -> bool:
    """True when `host:port` names this machine (the stand-in), which is spoken to without TLS."""
    host = api_endpoint.rsplit(":", 1)[0].strip("[]") if ":" in api_endpoint else api_endpoint
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PredictionClient:
    """One image in, scores out, over the official client library of the resource's API."""

    def __init__(self, resource: Resource, api_endpoint: str | None = None):
        self.resource = resource
        self.api_endpoint = api_endpoint or resource.api_host
        types: tuple[Any, Any] = (
            (VertexClient, VertexTransport) if resource.vertex else (LegacyClient, LegacyTransport)
        )
        client_type, transport_type = types
        if is_loopback(self.api_endpoint):  # the stand-in: plain gRPC, no Google credentials
            self.channel: grpc.Channel | None = grpc.insecure_channel(self.api_endpoint)
            self.client: Any = client_type(transport=transport_type(channel=self.channel))
        else:  # TLS and Application Default Credentials; nothing is sent until the first call
            self.channel = None
            self.client = client_type(client_options={"api_endpoint": self.api_endpoint})

    def predict(self, content: bytes, timeout: float) -> Answer:
        """Scores of every class for one image (PNG, JPEG or GIF bytes); raises google.api_core errors."""
        if self.resource.vertex:
            response = self.client.predict(
                request=vertex_request(self.resource.name, content), timeout=timeout
            )
            return read_vertex_response(response)
        response = self.client.predict(request=legacy_request(self.resource.name, content), timeout=timeout)
        return read_legacy_response(response)

    def close(self) -> None:
        """Close the channel."""
        self.client.transport.close()


def _value(data: Any) -> struct_pb2.Value:
    """A protobuf Value from plain JSON-like data."""
    return json_format.ParseDict(data, struct_pb2.Value())


def vertex_request(endpoint: str, content: bytes) -> PredictRequest:
    """A Vertex AI request asking an AutoML image model for every class's confidence."""
    request = PredictRequest(
        endpoint=endpoint, parameters=_value({"confidenceThreshold": 0.0, "maxPredictions": MAX_PREDICTIONS})
    )
    request.instances.append(_value({"content": base64.b64encode(content).decode("ascii")}))
    return request


def read_vertex_request(request: PredictRequest) -> tuple[list[bytes], dict[str, Any]]:
    """The images and parameters of a Vertex AI request (stand-in side)."""
    pb = PredictRequest.pb(request)
    instances = [json_format.MessageToDict(value) for value in pb.instances]
    contents = [base64.b64decode(instance["content"], validate=True) for instance in instances]
    parameters = json_format.MessageToDict(pb.parameters) if pb.HasField("parameters") else {}
    return contents, parameters or {}


def vertex_response(
    predictions: list[Scores], model: str, display_name: str, version: str
) -> PredictResponse:
    """A Vertex AI answer in the AutoML image classification format (stand-in side)."""
    response = PredictResponse(
        deployed_model_id="1", model=model, model_display_name=display_name, model_version_id=version
    )
    for scores in predictions:
        response.predictions.append(
            _value(
                {
                    "ids": [str(1000 + i) for i in range(len(scores))],
                    "displayNames": [name for name, _ in scores],
                    "confidences": [score for _, score in scores],
                }
            )
        )
    return response


def read_vertex_response(response: PredictResponse) -> Answer:
    """The display names and confidences of the first prediction."""
    pb = PredictResponse.pb(response)
    if not pb.predictions:
        raise ValueError("the answer holds no prediction")
    prediction = json_format.MessageToDict(pb.predictions[0])
    names, confidences = prediction.get("displayNames", []), prediction.get("confidences", [])
    if not isinstance(names, list) or not isinstance(confidences, list) or len(names) != len(confidences):
        raise ValueError("the answer is not an image classification prediction")
    scores = [(str(name), float(score)) for name, score in zip(names, confidences, strict=True)]
    return Answer(scores, pb.model_display_name, pb.model_version_id)


def legacy_request(model: str, content: bytes) -> automl_v1.PredictRequest:
    """A legacy AutoML request asking for every class's score."""
    return automl_v1.PredictRequest(
        name=model,
        payload=automl_v1.ExamplePayload(image=automl_v1.Image(image_bytes=content)),
        params={"score_threshold": "0"},
    )


def legacy_response(scores: Scores) -> automl_v1.PredictResponse:
    """A legacy AutoML answer (stand-in side)."""
    return automl_v1.PredictResponse(
        payload=[
            automl_v1.AnnotationPayload(
                annotation_spec_id=str(1000 + i),
                display_name=name,
                classification=automl_v1.ClassificationAnnotation(score=score),
            )
            for i, (name, score) in enumerate(scores)
        ]
    )


def read_legacy_response(response: automl_v1.PredictResponse) -> Answer:
    """The display names and scores of a legacy AutoML answer."""
    return Answer([(p.display_name, float(p.classification.score)) for p in response.payload])


def parse_labels(raw: str) -> dict[str, str]:
    """Parse COVIDXRAY_AUTOML_LABELS (`DISPLAY NAME=label,...`) into {casefolded display name: label}."""
    mapping: dict[str, str] = {}
    for part in raw.split(","):
        name, sep, label = part.partition("=")
        if not sep or not name.strip() or label.strip() not in LABELS:
            raise ConfigError(
                f"COVIDXRAY_AUTOML_LABELS must look like NAME=label,... with labels in {LABELS}"
            )
        mapping[name.strip().casefold()] = label.strip()
    missing = [label for label in LABELS if label not in mapping.values()]
    if missing:
        raise ConfigError(f"COVIDXRAY_AUTOML_LABELS maps no display name to {', '.join(missing)}")
    return mapping


def to_outcome(answer: Answer, mapping: dict[str, str]) -> Outcome:
    """Our probabilities from the model's scores: mapped, missing classes at 0, normalised to sum 1."""
    totals = dict.fromkeys(LABELS, 0.0)
    answered, unknown = set(), []
    for name, score in answer.scores:
        label = mapping.get(name.strip().casefold())
        if label is None:
            unknown.append(name)
        else:
            totals[label] += max(float(score), 0.0)
            answered.add(label)
    total = sum(totals.values())
    if not answered or total <= 0:
        raise ValueError(f"it holds no configured class (it said: {', '.join(unknown) or 'nothing'})")
    warnings = []
    if unknown:
        warnings.append(
            f"the AutoML model answered classes not in COVIDXRAY_AUTOML_LABELS: {', '.join(unknown)}"
        )
    for label in LABELS:
        if label not in answered:
            warnings.append(f"the AutoML model gave no score for {label}; counted as 0")
    return Outcome(probabilities={label: totals[label] / total for label in LABELS}, warnings=warnings)
