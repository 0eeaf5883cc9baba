"""One settings object, read from the environment (see DESIGN.md's settings table)."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MIN_SECRET_BYTES = 32


#: COVIDXRAY_OOD: what the gate does with an input that is not a frontal chest radiograph
OOD_MODES = ("refuse", "warn", "off")
#: COVIDXRAY_BURNED_IN: what is done with text burnt into an image's pixels
BURNED_IN_MODES = ("redact", "refuse", "keep")
DICOM_DESTINATION_PREFIXES = ("dimse://", "dimse+tls://", "dicomweb+http://", "dicomweb+https://")


class ConfigError(RuntimeError):
    """The environment does not describe a service that may start."""


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _int(name: str, default: int) -> int:
    raw = _env(name)
    try:
        return int(raw) if raw is not None else default
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc


def _float(name: str, default: float) -> float:
    raw = _env(name)
    try:
        return float(raw) if raw is not None else default
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc


def _path(name: str) -> Path | None:
    raw = _env(name)
    return Path(raw) if raw else None


def parse_keys(raw: str) -> dict[str, str]:
    """Parse `kid=secret,kid=secret` into a dict."""
    keys: dict[str, str] = {}
    for part in raw.split(","):
        kid, sep, secret = part.strip().partition("=")
        if not sep or not kid or not secret:
            raise ConfigError("COVIDXRAY_JWT_KEYS must look like kid=secret,kid=secret")
        keys[kid] = secret
    return keys


@dataclass(frozen=True)
class Settings:
    """Every deployment value of the service."""

    env: str = "development"
    data_dir: Path = Path("var")
    jwt_keys: dict[str, str] = field(default_factory=dict)  # kid -> secret; "" is the key without kid
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    secret_key: str = ""
    model: Path | None = None
    runtime: str | None = None
    runtime_threads: int = 1
    image_store: str = ""
    request_log: str = ""
    outbox: Path | None = None
    retention_days: int | None = None
    uncertain_below: float = 0.6
    ood: str = "refuse"  # the gate: refuse | warn | off
    max_upload_mb: int = 20
    max_pixels: int = 50_000_000
    max_batch: int = 16
    rate_limit: str | None = None
    trusted_proxies: int = 0
    admin_password_hash: str | None = None
    automl_endpoint: str | None = None
    automl_api_endpoint: str | None = None
    automl_labels: str = "COVID-19=covid,PNEUMONIA=pneumonia,NORMAL=normal"
    automl_timeout: float = 10.0
    dicom_ae_title: str = "COVIDXRAY"  # our AE title (listener, and calling AE of result C-STOREs)
    dicom_allowed_aes: tuple[str, ...] = ()  # calling AE titles the listener accepts (empty: any)
    dicom_destination: str | None = None  # dimse://AE@host:port or dicomweb+http(s)://host:port/path
    burned_in: str = "redact"  # text burnt into pixels: redact | refuse | keep
    dicom_tls_cert: Path | None = None  # the listener's certificate chain (PEM): DIMSE over TLS
    dicom_tls_key: Path | None = None  # its private key (PEM)
    dicom_tls_ca: Path | None = None  # CAs whose client certificates the listener requires (mutual TLS)

    @property
    def production(self) -> bool:
        """True when running as the production service."""
        return self.env == "production"

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Read the environment; `overrides` (tests) win over it."""
        env = _env("COVIDXRAY_ENV", "development") or "development"
        data_dir = Path(_env("COVIDXRAY_DATA_DIR", "var") or "var")
        data_dir = Path(overrides.pop("data_dir", data_dir))
        keys_raw = _env("COVIDXRAY_JWT_KEYS")
        single = _env("COVIDXRAY_JWT_SECRET")
        jwt_keys = parse_keys(keys_raw) if keys_raw else ({"": single} if single else {})
        retention = _env("COVIDXRAY_RETENTION_DAYS")
        model = _env("COVIDXRAY_MODEL")
        outbox = _env("COVIDXRAY_OUTBOX")
        settings = cls(
            env=env,
            data_dir=data_dir,
            jwt_keys=jwt_keys,
            jwt_issuer=_env("COVIDXRAY_JWT_ISSUER"),
            jwt_audience=_env("COVIDXRAY_JWT_AUDIENCE"),
            secret_key=_env("COVIDXRAY_SECRET_KEY", "") or "",
            model=Path(model) if model else None,
            runtime=_env("COVIDXRAY_RUNTIME"),
            runtime_threads=_int("COVIDXRAY_RUNTIME_THREADS", 1),
            image_store=_env("COVIDXRAY_IMAGE_STORE", f"file://{(data_dir / 'uploads').resolve()}") or "",
            request_log=_env(
                "COVIDXRAY_REQUEST_LOG", f"sqlite:///{(data_dir / 'requests.sqlite3').resolve()}"
            )
            or "",
            outbox=Path(outbox) if outbox else data_dir / "outbox.sqlite3",
            retention_days=int(retention) if retention else None,
            uncertain_below=_float("COVIDXRAY_UNCERTAIN_BELOW", 0.6),
            ood=(_env("COVIDXRAY_OOD", "refuse") or "refuse").lower(),
            max_upload_mb=_int("COVIDXRAY_MAX_UPLOAD_MB", 20),
            max_pixels=_int("COVIDXRAY_MAX_PIXELS", 50_000_000),
            max_batch=_int("COVIDXRAY_MAX_BATCH", 16),
            rate_limit=_env("COVIDXRAY_RATE_LIMIT", "600/minute" if env == "production" else None),
            trusted_proxies=_int("COVIDXRAY_TRUSTED_PROXIES", 0),
            admin_password_hash=_env("COVIDXRAY_ADMIN_PASSWORD_HASH"),
            automl_endpoint=_env("COVIDXRAY_AUTOML_ENDPOINT"),
            automl_api_endpoint=_env("COVIDXRAY_AUTOML_API_ENDPOINT"),
            automl_labels=_env("COVIDXRAY_AUTOML_LABELS", cls.automl_labels) or cls.automl_labels,
            automl_timeout=_float("COVIDXRAY_AUTOML_TIMEOUT", 10.0),
            dicom_ae_title=(_env("COVIDXRAY_DICOM_AE_TITLE", "COVIDXRAY") or "COVIDXRAY").strip(),
            dicom_allowed_aes=tuple(
                ae.strip() for ae in (_env("COVIDXRAY_DICOM_ALLOWED_AES", "") or "").split(",") if ae.strip()
            ),
            dicom_destination=_env("COVIDXRAY_DICOM_DESTINATION"),
            burned_in=(_env("COVIDXRAY_BURNED_IN", "redact") or "redact").lower(),
            dicom_tls_cert=_path("COVIDXRAY_DICOM_TLS_CERT"),
            dicom_tls_key=_path("COVIDXRAY_DICOM_TLS_KEY"),
            dicom_tls_ca=_path("COVIDXRAY_DICOM_TLS_CA"),
        )
        return replace(settings, **overrides)

    def validated(self) -> Settings:
        """Fill development secrets, or refuse production without strong ones."""
        if self.ood not in OOD_MODES:
            raise ConfigError(f"COVIDXRAY_OOD must be one of {', '.join(OOD_MODES)}, got {self.ood!r}")
        self._check_dicom()
        if self.production:
            missing = self._weak_production_secrets()
            if missing:
                raise ConfigError("production needs strong secrets; missing or weak: " + ", ".join(missing))
            for uri in (self.image_store, self.request_log):
                if uri.startswith(("file://", "sqlite://")):
                    log.warning("%s is local and ephemeral on Cloud Run", uri.split("://")[0])
            return self
        secret_key = self.secret_key or _dev_secret(self.data_dir / "secret_key")
        jwt_keys = self.jwt_keys or {"": _dev_secret(self.data_dir / "jwt_secret")}
        return replace(self, secret_key=secret_key, jwt_keys=jwt_keys)

    def _check_dicom(self) -> None:
        """The DICOM node's settings: AE titles of 1-16 characters, a known destination and mode."""
        if self.burned_in not in BURNED_IN_MODES:
            raise ConfigError(f"COVIDXRAY_BURNED_IN must be one of {', '.join(BURNED_IN_MODES)}")
        for name, ae in [("COVIDXRAY_DICOM_AE_TITLE", self.dicom_ae_title)] + [
            ("COVIDXRAY_DICOM_ALLOWED_AES", ae) for ae in self.dicom_allowed_aes
        ]:
            if not 0 < len(ae) <= 16 or "\\" in ae or not ae.isprintable():
                raise ConfigError(f"{name}: an AE title has 1 to 16 printable characters, got {ae!r}")
        destination = self.dicom_destination
        if destination and not destination.startswith(DICOM_DESTINATION_PREFIXES):
            raise ConfigError(
                "COVIDXRAY_DICOM_DESTINATION must start with " + ", ".join(DICOM_DESTINATION_PREFIXES)
            )
        if bool(self.dicom_tls_cert) != bool(self.dicom_tls_key):
            raise ConfigError("COVIDXRAY_DICOM_TLS_CERT and COVIDXRAY_DICOM_TLS_KEY go together")
        if self.production and not self.dicom_allowed_aes:
            log.warning("COVIDXRAY_DICOM_ALLOWED_AES is empty: the DICOM listener accepts any calling AE")

    def _weak_production_secrets(self) -> list[str]:
        missing = []
        if len(self.secret_key.encode()) < MIN_SECRET_BYTES:
            missing.append(f"COVIDXRAY_SECRET_KEY (at least {MIN_SECRET_BYTES} bytes)")
        if not self.jwt_keys:
            missing.append("COVIDXRAY_JWT_SECRET or COVIDXRAY_JWT_KEYS")
        elif any(len(s.encode()) < MIN_SECRET_BYTES for s in self.jwt_keys.values()):
            missing.append(f"COVIDXRAY_JWT_SECRET/KEYS (each at least {MIN_SECRET_BYTES} bytes)")
        return missing


def _dev_secret(path: Path) -> str:
    """Read a development secret, creating it once; linking makes the first writer win for all workers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(secrets.token_urlsafe(48))
        tmp.chmod(0o600)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()
