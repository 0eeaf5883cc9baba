"""Schemathesis against the app's own /api/openapi.json: no 5xx, every response as documented.

The app is called in-process through WSGI with a valid token. Image fields and raw image bodies
(`format: binary`, image/png, image/jpeg, application/dicom) are filled by a strategy that yields
real PNG or JPEG X-ray-like images most of the time, so that a good share of the requests reach
the model and answer 200; schemathesis' positive and negative data do the rest. Only the checks
on responses run: the document does not mark `image` as required, so "schema-valid request
rejected" would only restate that.
"""

from __future__ import annotations

import io
import time
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

# A missing test dependency skips this module instead of failing the whole run's collection.
schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (dev extra)")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

REQUESTS = 600  # generated requests per run (at least 500 must be sent)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    ignored_auth,
]


@st.composite
def xray_images(draw: st.DrawFn) -> bytes:
    """A real PNG or JPEG image that the service accepts: 64-320 px, aspect within 1:4, gray or RGB."""
    width = draw(st.integers(64, 320))
    height = draw(st.integers(max(64, -(-width // 4)), min(320, width * 4)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        img = Image.linear_gradient("L").resize((width, height))
    else:
        img = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8))
    fmt = draw(st.sampled_from(["PNG", "JPEG"]))
    out = io.BytesIO()
    img.convert(draw(st.sampled_from(["L", "RGB"]))).save(out, fmt)
    return out.getvalue()


def broken(data: bytes) -> st.SearchStrategy[bytes]:
    """`data` cut short, or with some bytes changed."""
    return st.one_of(
        st.integers(0, len(data) - 1).map(lambda cut: data[:cut]),
        st.integers(0, len(data) - 1).map(lambda at: data[:at] + b"\x00\xff" + data[at + 2 :]),
    )


def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """Draw from each strategy with its weight (st.one_of would merge repeated branches into one)."""
    return st.sampled_from([s for weight, s in choices for _ in range(weight)]).flatmap(lambda s: s)


#: Real images 4 times out of 5; broken images and arbitrary bytes otherwise.
uploads = weighted((8, xray_images()), (1, xray_images().flatmap(broken)), (1, st.binary(max_size=256)))
schemathesis.openapi.format("binary", uploads)
for media_type in ("image/png", "image/jpeg", "application/dicom"):
    schemathesis.openapi.media_type(media_type, uploads)
# STOW-RS: the bytes as they are (sent without a boundary, so answered 415 as documented)
schemathesis.serializer.alias('multipart/related; type="application/dicom"', "application/octet-stream")
schemathesis.openapi.media_type('multipart/related; type="application/dicom"', uploads)


def test_api_answers_generated_requests_as_its_openapi_document_says(app, token, stored):
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    predicts = [op for op in operations if op.method.upper() == "POST" and op.path.startswith("/api/")]
    assert {op.path for op in predicts} == {"/api/v1/predict", "/api/prediction"}
    strategy = weighted(  # mostly valid predictions: the routes that read uploads
        *[(2, op.as_strategy()) for op in predicts],
        (1, schema.as_strategy()),
        (1, schema.as_strategy(generation_mode=GenerationMode.NEGATIVE)),
    )
    headers = {"Authorization": f"Bearer {token}"}
    statuses: Counter[tuple[str, int]] = Counter()

    @settings(
        max_examples=REQUESTS,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def call(case: schemathesis.Case) -> None:
        response = case.call(headers=headers)
        statuses[(f"{case.method} {case.operation.path}", response.status_code)] += 1
        case.validate_response(response, checks=CHECKS, headers=headers)

    started = time.monotonic()
    call()
    elapsed = time.monotonic() - started
    sent = sum(statuses.values())
    answered = {status for _, status in statuses}
    ok = sum(n for (route, status), n in statuses.items() if status == 200 and route.startswith("POST"))
    deleted = sum(n for (route, status), n in statuses.items() if status == 204)
    summary = f"{sent} requests in {elapsed:.1f} s: {dict(statuses)}"
    assert sent >= 500, summary
    assert ok >= sent / 5, summary
    assert not {s for s in answered if s >= 500}, summary
    assert stored()[1] == ok - deleted  # a record for every prediction, none for any rejected request
