"""covidxray: chest X-ray classification service (covid, pneumonia, normal)."""

from __future__ import annotations

__version__ = "0.1.0"
