"""Forged and broken tokens over the HTTP API (RFC 8725): each one a bare 401 (403 for a missing scope).

test_auth.py checks `verify_token`'s reason codes; here every attack goes through the API with an
issuer, an audience and a `kid` configured, and the answer, the headers, the store and the log
lines are checked: the body is exactly the generic one, only the reason code is logged, and the
token (or anything in it) never appears in a log line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from covidxray import create_app
from covidxray.settings import Settings
from covidxray.web.auth import issue_token
from tests.helpers import image_bytes

KID = "2026a"
SECRET = "rotating-secret-2026a-" + "q" * 48  # 64+ bytes: HS512 with it draws no key-length warning
ISSUER = "https://covidxray.test"
AUDIENCE = "covidxray-api"
SUBJECT = "mallory-the-forger"  # appears in every forged token; must never reach a log line
UNAUTHORIZED = {"error": {"code": "unauthorized", "message": "a valid bearer token is required"}}
FORBIDDEN = {"error": {"code": "forbidden", "message": "this token may not do that"}}


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared settings with a `kid`-named key, an issuer and an audience."""
    return replace(settings, jwt_keys={KID: SECRET}, jwt_issuer=ISSUER, jwt_audience=AUDIENCE)


def claims(**changes: Any) -> dict[str, Any]:
    """Valid claims for SUBJECT; `changes` override them (None removes a claim)."""
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": SUBJECT,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "scope": "predict read",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], key: bytes | None = None) -> str:
    """A token built by hand: HMAC-SHA256 with `key` (any bytes, PEM included), or unsigned."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest()) if key else ""
    return f"{signing_input}.{signature}"


def sign(payload: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256", kid: str | None = KID) -> str:
    return jwt.encode(payload, key, algorithm=algorithm, headers={"kid": kid} if kid else None)


def tampered() -> str:
    """A genuine token whose payload was edited to grant `admin`, keeping the old signature."""
    header, _, signature = sign(claims()).split(".")
    return f"{header}.{b64(json.dumps(claims(scope='admin')).encode())}.{signature}"


# (case, token builder taking the RSA key, expected status, expected logged reason)
TOKENS: list[tuple[str, Callable[[Any], str], int, str]] = [
    ("alg none", lambda k: forge({"alg": "none", "kid": KID}, claims()), 401, "algorithm"),
    ("alg NONE", lambda k: forge({"alg": "NONE", "kid": KID}, claims()), 401, "algorithm"),
    ("alg none with a signature",
     lambda k: forge({"alg": "none", "kid": KID}, claims(), SECRET.encode()), 401, "algorithm"),
    ("HS256 signed with the RSA public key (HS/RS confusion)",
     lambda k: forge({"alg": "HS256", "typ": "JWT", "kid": KID}, claims(), public_pem(k)), 401,
     "InvalidSignatureError"),
    ("RS256 token", lambda k: sign(claims(), k, "RS256"), 401, "algorithm"),
    ("HS384 with the same key", lambda k: sign(claims(), algorithm="HS384"), 401, "algorithm"),
    ("HS512 with the same key", lambda k: sign(claims(), algorithm="HS512"), 401, "algorithm"),
    ("wrong key", lambda k: sign(claims(), "another-secret-" + "w" * 32), 401, "InvalidSignatureError"),
    ("payload edited after signing", lambda k: tampered(), 401, "InvalidSignatureError"),
    ("signature stripped", lambda k: sign(claims()).rsplit(".", 1)[0] + ".", 401, "InvalidSignatureError"),
    ("attacker key named by jku", lambda k: forge({"alg": "HS256", "kid": KID, "jku": "https://evil.test/k"},
                                                  claims(), b"attacker-" + b"k" * 32), 401,
     "InvalidSignatureError"),
    ("unknown kid", lambda k: sign(claims(), kid="2025z"), 401, "unknown_kid"),
    ("no kid", lambda k: sign(claims(), kid=None), 401, "unknown_kid"),
    ("kid path traversal", lambda k: sign(claims(), kid="../../../dev/null"), 401, "unknown_kid"),
    ("kid of the wrong type", lambda k: forge({"alg": "HS256", "kid": 7}, claims(), SECRET.encode()), 401,
     "malformed"),
    ("expired", lambda k: sign(claims(exp=int(time.time()) - 30)), 401, "expired"),
    ("nbf in the future", lambda k: sign(claims(nbf=int(time.time()) + 3600)), 401, "ImmatureSignatureError"),
    ("missing exp", lambda k: sign(claims(exp=None)), 401, "MissingRequiredClaimError"),
    ("exp not a number", lambda k: sign(claims(exp="tomorrow")), 401, "DecodeError"),
    ("missing sub", lambda k: sign(claims(sub=None)), 401, "MissingRequiredClaimError"),
    ("wrong aud", lambda k: sign(claims(aud="another-api")), 401, "InvalidAudienceError"),
    ("missing aud", lambda k: sign(claims(aud=None)), 401, "MissingRequiredClaimError"),
    ("wrong iss", lambda k: sign(claims(iss="https://evil.test")), 401, "InvalidIssuerError"),
    ("missing iss", lambda k: sign(claims(iss=None)), 401, "MissingRequiredClaimError"),
    ("unknown crit extension", lambda k: forge({"alg": "HS256", "kid": KID, "crit": ["x-evil"], "x-evil": 1},
                                               claims(), SECRET.encode()), 401, "malformed"),
    ("malformed", lambda k: "not-a-jwt-Zq81", 401, "malformed"),
    ("two segments", lambda k: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtIn0", 401, "malformed"),
    ("header not an object", lambda k: f"{b64(b'[1]')}.{b64(b'{}')}.c2ln", 401, "malformed"),
    ("not base64", lambda k: "%%%.^^^.***", 401, "malformed"),
    ("oversized (validly signed)", lambda k: sign(claims(pad="p" * 5000)), 401, "oversized"),
    ("read scope only", lambda k: sign(claims(scope="read")), 403, "scope"),
    ("no scope claim", lambda k: sign(claims(scope=None)), 403, "scope"),
    ("scope of the wrong type", lambda k: sign(claims(scope={"predict": True})), 403, "scope"),
]  # fmt: skip


def post(client, headers: dict[str, str], query: str = "") -> Any:
    return client.post(
        f"/api/v1/predict{query}",
        headers=headers,
        data={"image": (io.BytesIO(image_bytes((256, 256))), "x.png")},
    )


def assert_logs_hold_no_secret(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    """No log record, formatted or in its structured fields, contains any of `secrets`."""
    for record in caplog.records:
        text = record.getMessage() + " " + " ".join(repr(value) for value in vars(record).values())
        for secret in secrets:
            assert secret not in text, f"{secret[:20]}… logged by {record.name}: {record.getMessage()}"


def test_a_valid_token_passes(client, settings, stored):
    response = post(client, {"Authorization": f"Bearer {issue_token(settings, SUBJECT)}"})
    assert response.status_code == 200
    assert stored() == (1, 1)


@pytest.mark.parametrize(("make", "status", "reason"), [t[1:] for t in TOKENS], ids=[t[0] for t in TOKENS])
@pytest.mark.parametrize("header", ["Authorization", "x-access-token"])
def test_forged_or_broken_token_gets_a_bare_401_and_only_its_reason_is_logged(
    client, caplog, stored, rsa_key, header, make, status, reason
):
    token = make(rsa_key)
    caplog.set_level(logging.DEBUG)
    value = f"Bearer {token}" if header == "Authorization" else token
    response = post(client, {header: value})
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.get_json() == (UNAUTHORIZED if status == 401 else FORBIDDEN)
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="covidxray"')
    assert ("insufficient_scope" in challenge) == (status == 403)
    assert stored() == (0, 0)
    reasons = [r.reason for r in caplog.records if r.name == "covidxray.web.auth" and hasattr(r, "reason")]
    assert reasons == [reason]
    assert_logs_hold_no_secret(caplog, token, SUBJECT, SECRET)


@pytest.mark.parametrize("name", ["token", "access_token", "jwt", "x-access-token"])
def test_a_valid_token_in_the_query_string_is_ignored(client, settings, caplog, name):
    token = issue_token(settings, SUBJECT)
    caplog.set_level(logging.DEBUG)
    response = post(client, {}, query=f"?{name}={token}")
    assert response.status_code == 401 and response.get_json() == UNAUTHORIZED
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert [r.reason for r in caplog.records if hasattr(r, "reason")] == ["missing"]
    assert_logs_hold_no_secret(caplog, token)


@pytest.mark.parametrize(
    "value", ["Bearer", "Bearer ", "Basic YWxpY2U6c2VjcmV0", "Token abc", "bearer\t"], ids=repr
)
def test_authorization_header_without_a_bearer_token_is_401(client, value):
    response = post(client, {"Authorization": value})
    assert response.status_code == 401 and response.get_json() == UNAUTHORIZED


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/api/v1/predictions/x"), ("DELETE", "/api/v1/predictions/x")]
)
def test_other_api_routes_answer_forged_tokens_the_same_way(client, rsa_key, method, path):
    token = forge({"alg": "none", "kid": KID}, claims())
    response = client.open(path, method=method, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401 and response.get_json() == UNAUTHORIZED
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_hs_rs_confusion_against_a_service_whose_key_is_a_public_pem(settings, predictor, rsa_key, caplog):
    """Even with the RSA public key configured as the HMAC secret, a token HMAC-signed with it fails."""
    pem = public_pem(rsa_key)
    app = create_app(settings=replace(settings, jwt_keys={KID: pem.decode()}), predictor=predictor)
    token = forge({"alg": "HS256", "kid": KID}, claims(), pem)
    caplog.set_level(logging.DEBUG)
    response = post(app.test_client(), {"Authorization": f"Bearer {token}"})
    assert response.status_code == 401 and response.get_json() == UNAUTHORIZED
    assert_logs_hold_no_secret(caplog, token, SUBJECT)


def test_key_rotation_through_the_environment_keeps_old_tokens_until_their_key_is_removed(
    tmp_path, predictor, monkeypatch, caplog
):
    old_secret, new_secret = "old-" + "o" * 40, "new-" + "n" * 40

    def service(keys: str) -> tuple[Any, Settings]:
        monkeypatch.setenv("COVIDXRAY_JWT_KEYS", keys)
        settings = Settings.from_env(
            ood="off",  # generated pictures; the gate is tests/predictors/test_ood.py's
            data_dir=tmp_path,
            secret_key="s" * 40,
            image_store=f"file://{tmp_path / 'uploads'}",
            request_log=f"sqlite:///{tmp_path / 'requests.sqlite3'}",
        )
        app = create_app(settings=settings, predictor=predictor)
        return app.test_client(), app.extensions["covidxray"].settings

    def status(client, token: str) -> int:
        return int(post(client, {"Authorization": f"Bearer {token}"}).status_code)

    for name in ("COVIDXRAY_JWT_SECRET", "COVIDXRAY_JWT_ISSUER", "COVIDXRAY_JWT_AUDIENCE"):
        monkeypatch.delenv(name, raising=False)
    caplog.set_level(logging.DEBUG)
    before, settings = service(f"2026a={old_secret}")
    old_token = issue_token(settings, "alice")
    assert jwt.get_unverified_header(old_token)["kid"] == "2026a"
    assert status(before, old_token) == 200

    during, settings = service(f"2026b={new_secret},2026a={old_secret}")  # the new key signs, both verify
    new_token = issue_token(settings, "alice")
    assert jwt.get_unverified_header(new_token)["kid"] == "2026b"
    assert (status(during, old_token), status(during, new_token)) == (200, 200)
    assert status(before, old_token) == 200  # instances not yet rolled keep answering

    after, _ = service(f"2026b={new_secret}")
    assert (status(after, old_token), status(after, new_token)) == (401, 200)
    assert_logs_hold_no_secret(caplog, old_secret, new_secret, old_token, new_token)
