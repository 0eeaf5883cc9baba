"""Validation of the optional clinical fields, shared by the browser form and the API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from covidxray.errors import InvalidField

RANGES = {"age": (0, 120), "symptom_days": (0, 60)}
SEXES = ("female", "male", "other")
FLAGS = ("trouble_breathing", "chest_pain", "tiredness", "bluish_color", "runny_nose", "cough", "fever")
FIELD_NAMES = (*RANGES, "sex", *FLAGS)
_TRUE, _FALSE = {"1", "true", "on", "yes"}, {"0", "false", "off", "no"}


def parse_clinical(values: Mapping[str, list[str]]) -> dict[str, Any]:
    """Validate the clinical fields in `values` (name -> all values sent); ignore other names.

    Raises InvalidField with one message per bad field.
    """
    clean: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for name in FIELD_NAMES:
        sent = [v.strip() for v in values.get(name, []) if v.strip() != ""]
        if not sent:
            continue
        if len(sent) > 1:
            problems[name] = "give this field once"
            continue
        try:
            clean[name] = _parse_one(name, sent[0])
        except ValueError as exc:
            problems[name] = str(exc)
    if problems:
        summary = "; ".join(f"{name}: {message}" for name, message in problems.items())
        raise InvalidField(f"invalid clinical fields: {summary}", fields=problems)
    return clean


def parse_flag(values: Mapping[str, list[str]], name: str) -> bool:
    """A 0/1 option such as `explain` (absent means 0); raises InvalidField when malformed."""
    sent = [v.strip() for v in values.get(name, []) if v.strip() != ""]
    if len(sent) > 1:
        raise InvalidField(f"{name}: give this field once", fields={name: "give this field once"})
    try:
        return bool(sent) and bool(_parse_one(name, sent[0]))
    except ValueError as exc:
        raise InvalidField(f"{name}: {exc}", fields={name: str(exc)}) from exc


def _parse_one(name: str, raw: str) -> int | str:
    if name in RANGES:
        low, high = RANGES[name]
        digits = raw.lstrip("0") or "0"  # ASCII digits only: str.isdigit() also accepts "٣" and "²"
        if not (raw.isascii() and raw.isdigit()) or len(digits) > 3 or not low <= int(digits) <= high:
            raise ValueError(f"must be a whole number from {low} to {high}")
        return int(raw)
    if name == "sex":
        if raw.lower() not in SEXES:
            raise ValueError("must be female, male or other")
        return raw.lower()
    if raw.lower() in _TRUE:
        return 1
    if raw.lower() in _FALSE:
        return 0
    raise ValueError("must be 0 or 1")
