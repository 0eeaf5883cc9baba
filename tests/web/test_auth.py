"""Tokens: HS256 only, `exp` required, issuer/audience, scopes, key rotation."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import replace

import jwt
import pytest

from covidxray.errors import Unauthorized
from covidxray.settings import Settings
from covidxray.web.auth import issue_token, verify_token

SECRET = "k" * 40


@pytest.fixture
def keys() -> Settings:
    return Settings(jwt_keys={"": SECRET}, secret_key="s" * 40)


def sign(claims: dict, key: str = SECRET, algorithm: str = "HS256", headers: dict | None = None) -> str:
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def future() -> int:
    return int(time.time()) + 600


def test_issued_token_verifies_with_its_subject_and_scopes(keys):
    principal = verify_token(keys, issue_token(keys, "alice", scopes=["predict"]))
    assert principal.subject == "alice" and principal.scopes == {"predict"}
    assert principal.allows("predict") and not principal.allows("read")


def unsigned(claims: dict) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


REJECTED = [
    ("alg none", lambda: unsigned({"sub": "a", "exp": future()}), "algorithm"),
    ("HS512 with the same key", lambda: sign({"sub": "a", "exp": future()}, algorithm="HS512"), "algorithm"),
    ("wrong key", lambda: sign({"sub": "a", "exp": future()}, key="w" * 40), "InvalidSignatureError"),
    ("expired", lambda: sign({"sub": "a", "exp": int(time.time()) - 10}), "expired"),
    ("missing exp", lambda: sign({"sub": "a"}), "MissingRequiredClaimError"),
    (
        "nbf in the future",
        lambda: sign({"sub": "a", "exp": future(), "nbf": future()}),
        "ImmatureSignatureError",
    ),
    ("unknown kid", lambda: sign({"sub": "a", "exp": future()}, headers={"kid": "old"}), "unknown_kid"),
    ("malformed", lambda: "not.a.token", "malformed"),
    ("oversized", lambda: "a" * 5000, "oversized"),
]


@pytest.mark.parametrize(("case", "make", "reason"), REJECTED, ids=[c[0] for c in REJECTED])
def test_bad_tokens_are_rejected_with_a_reason(keys, case, make, reason):
    with pytest.raises(Unauthorized) as caught:
        verify_token(keys, make())
    assert caught.value.reason == reason
    assert caught.value.status == 401 and "WWW-Authenticate" in caught.value.headers


def test_issuer_and_audience_are_checked_when_configured(keys):
    strict = replace(keys, jwt_issuer="covidxray", jwt_audience="api")
    assert verify_token(strict, issue_token(strict, "a")).subject == "a"
    with pytest.raises(Unauthorized):
        verify_token(strict, sign({"sub": "a", "exp": future(), "iss": "other", "aud": "api"}))
    with pytest.raises(Unauthorized):
        verify_token(strict, sign({"sub": "a", "exp": future(), "iss": "covidxray", "aud": "web"}))


def test_key_rotation_accepts_old_tokens_until_the_old_key_is_removed():
    old = Settings(jwt_keys={"2026a": "a" * 40}, secret_key="s" * 40)
    old_token = issue_token(old, "alice")
    rotated = replace(old, jwt_keys={"2026b": "b" * 40, "2026a": "a" * 40})
    new_token = issue_token(rotated, "alice")
    assert jwt.get_unverified_header(new_token)["kid"] == "2026b"
    assert verify_token(rotated, old_token).subject == "alice"
    assert verify_token(rotated, new_token).subject == "alice"
    retired = replace(old, jwt_keys={"2026b": "b" * 40})
    with pytest.raises(Unauthorized):
        verify_token(retired, old_token)


def test_token_command_prints_a_token_the_service_accepts(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from covidxray.cli import main

    monkeypatch.setenv("COVIDXRAY_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("COVIDXRAY_JWT_SECRET", raising=False)
    monkeypatch.delenv("COVIDXRAY_JWT_KEYS", raising=False)
    result = CliRunner().invoke(main, ["token", "--subject", "lab-7", "--ttl", "60", "--scope", "read"])
    assert result.exit_code == 0, result.output
    principal = verify_token(Settings.from_env().validated(), result.output.strip())
    assert principal.subject == "lab-7" and principal.scopes == {"read"}
