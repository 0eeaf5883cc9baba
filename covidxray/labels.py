"""The class labels, in the one order used everywhere."""

from __future__ import annotations

LABELS: tuple[str, ...] = ("covid", "pneumonia", "normal")
UNCERTAIN = "uncertain"
