"""The `covidxray` command line: one group, its commands defined by command group in this package."""

from __future__ import annotations

import click

from covidxray.cli import archive, dicom, evaluate, model, predict, service


@click.group()
def main() -> None:
    """covidxray: chest X-ray classification (covid, pneumonia, normal)."""


for command in (
    model.train,
    model.join,
    model.quantize,
    model.gate,
    evaluate.evaluate,
    predict.predict,
    service.token,
    service.automl_emulator,
    service.bigquery_init,
    dicom.dicom_listen,
    archive.score_archive,
):
    main.add_command(command)
