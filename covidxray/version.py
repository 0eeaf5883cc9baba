"""The package version, in one place (exported by `covidxray`, shown by the OpenAPI document)."""

from __future__ import annotations

__version__ = "0.1.0"
