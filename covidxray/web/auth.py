"""JSON Web Tokens: HS256 only, `exp` required, optional issuer/audience, scopes."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import jwt
from flask import g, request

from covidxray.errors import Forbidden, Unauthorized
from covidxray.service import current_services
from covidxray.settings import Settings

log = logging.getLogger(__name__)

ALGORITHMS = ["HS256"]
SCOPES = ("predict", "read", "admin")
MAX_TOKEN_LENGTH = 4096
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Principal:
    """Who a valid token speaks for."""

    subject: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        """True when the token carries `scope` or `admin`."""
        return scope in self.scopes or "admin" in self.scopes


def issue_token(
    settings: Settings, subject: str, ttl: int = 3600, scopes: Iterable[str] = ("predict", "read")
) -> str:
    """Sign a token with the first configured key (its `kid` in the header when it has one)."""
    kid, secret = next(iter(settings.jwt_keys.items()))
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "scope": " ".join(scopes),
    }
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": kid} if kid else None)


def verify_token(settings: Settings, token: str) -> Principal:
    """Check a token's key, signature and claims; raise Unauthorized with a reason code."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise Unauthorized("oversized")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise Unauthorized("malformed") from exc
    if header.get("alg") not in ALGORITHMS:
        raise Unauthorized("algorithm")
    kid = header.get("kid") or ""
    secret = settings.jwt_keys.get(kid) if isinstance(kid, str) else None
    if secret is None:
        raise Unauthorized("unknown_kid")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=ALGORITHMS,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            options={"require": ["exp", "sub"], "verify_aud": settings.jwt_audience is not None},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("expired") from exc
    except jwt.PyJWTError as exc:  # InvalidKeyError too: a key PyJWT refuses as an HMAC secret (a PEM)
        raise Unauthorized(type(exc).__name__) from exc
    return Principal(subject=str(claims["sub"]), scopes=_scopes(claims.get("scope")))


def _scopes(raw: object) -> frozenset[str]:
    if isinstance(raw, str):
        return frozenset(raw.split())
    if isinstance(raw, list):
        return frozenset(str(s) for s in raw)
    return frozenset()


def bearer_token() -> str | None:
    """The request's token from `Authorization: Bearer` or `x-access-token`; never the query string."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("x-access-token") or None


def authenticate(scope: str) -> Principal:
    """Verify the request's token and its scope; store the principal on `g`."""
    token = bearer_token()
    try:
        if token is None:
            raise Unauthorized("missing")
        principal = verify_token(current_services().settings, token)
    except Unauthorized as exc:
        log.info("token rejected", extra={"reason": exc.reason})
        raise
    if not principal.allows(scope):
        log.info("token lacks scope", extra={"reason": "scope", "scope": scope})
        challenge = f'Bearer realm="covidxray", error="insufficient_scope", scope="{scope}"'  # RFC 6750
        raise Forbidden(headers={"WWW-Authenticate": challenge})
    g.principal = principal
    return principal


def require(scope: str) -> Callable[[F], F]:
    """Decorate a view so that it needs a valid token carrying `scope`."""

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            authenticate(scope)
            return view(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return decorator
