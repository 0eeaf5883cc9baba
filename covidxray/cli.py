"""The `covidxray` command line."""

from __future__ import annotations

import click


@click.group()
def main() -> None:
    """covidxray: chest X-ray classification (covid, pneumonia, normal)."""
