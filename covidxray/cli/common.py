"""What the commands share: data folders (local or gs://) and log lines on stderr."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click


@contextmanager
def data_folder(location: str) -> Iterator[Path]:
    """The data at `location` (a folder or gs://bucket/prefix) as a local folder."""
    from covidxray.ml.datasets import local_folder

    try:
        with local_folder(location) as folder:
            yield folder
    except FileNotFoundError as exc:
        raise click.BadParameter(str(exc), param_hint="--data") from exc


def setup_logging() -> None:
    """Send library log lines to stderr for the command-line tools."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def data_option(help: str):  # noqa: ANN201, A002 (a click decorator)
    """`--data DIR`: a data folder, local or gs://bucket/prefix."""
    return click.option("--data", "data_dir", required=True, type=str, help=help)


def ood_option(help: str):  # noqa: ANN201, A002 (a click decorator)
    """`--ood DIR`: a folder of non-frontal inputs, one subfolder per kind (ct/, lateral/, ...)."""
    path = click.Path(exists=True, file_okay=False, path_type=Path)
    return click.option("--ood", "ood_dir", type=path, default=None, help=help)


#: `--runtime`: which of the model's runtimes to run
runtime_option = click.option(
    "--runtime",
    "runtime_name",
    type=click.Choice(["onnx", "onnx-float", "onnx-int8", "keras"]),
    default="onnx",
    show_default=True,
    help="onnx: the served twin; onnx-float, onnx-int8: that twin; keras: the Keras model itself",
)
#: `--model FILE.keras` of an existing model (default: the shipped one)
model_option = click.option(
    "--model",
    "model_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="the .keras model (default: the shipped one)",
)
