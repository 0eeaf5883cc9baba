"""Model commands: train, quantize, gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from covidxray.cli.common import data_folder, data_option, model_option, ood_option, setup_logging

#: what `--ood` means to train and gate
TRAIN_VAL = "folder (or gs://bucket/prefix) with train/<label>/ and val/<label>/"
NAMED_KINDS = "folder of known non-frontal inputs (ct/, lateral/) that the gate learns to name"


@click.command()
@data_option(TRAIN_VAL)
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="FILE.keras to write"
)
@click.option(
    "--backbone",
    type=click.Choice(["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "scratch"]),
    default="efficientnet-lite0",
    show_default=True,
    help="efficientnet-liteN: fine-tune an ImageNet-pretrained one (Lite0: shipped); scratch: the small CNN",
)
@click.option(
    "--size",
    type=click.IntRange(min=32),
    default=None,
    help="input size in pixels (default: 288 pretrained, 224 scratch)",
)
@click.option("--epochs", type=int, default=None, help="maximum epochs (early stopping on val)")
@click.option("--seed", type=int, default=None, help="random seed (member i uses seed + i)")
@click.option(
    "--members",
    type=click.IntRange(min=1),
    default=None,
    help="networks to train and average into the one shipped model",
)
@click.option(
    "--mixup",
    type=click.FloatRange(min=0.0),
    default=None,
    help="Beta(a, a) parameter of mixup within each batch (0: off)",
)
@click.option("--hflip/--no-hflip", default=None, help="random left-right flips in the augmentation")
@click.option(
    "--tune-from",
    type=click.IntRange(min=0),
    default=None,
    help="pretrained backbones: the first block that trains, on cached outputs of the frozen ones "
    "below it (0: the whole network)",
)
@click.option(
    "--adapt-bn/--no-adapt-bn",
    default=None,
    help="pretrained backbones: re-estimate the training blocks' batch-norm statistics on the films "
    "before they train (AdaBN) instead of keeping ImageNet's (default: on where --tune-from > 0)",
)
@ood_option(NAMED_KINDS)
def train(
    data_dir: str,
    out: Path,
    backbone: str,
    size: int | None,
    epochs: int | None,
    seed: int | None,
    members: int | None,
    mixup: float | None,
    hflip: bool | None,
    tune_from: int | None,
    adapt_bn: bool | None,
    ood_dir: Path | None,
) -> None:
    """Train the model; write FILE.keras, its ONNX twins FILE.onnx and FILE.int8.onnx, and FILE.json."""
    import json

    from covidxray.ml.config import TrainConfig
    from covidxray.ml.training import train as run_training

    setup_logging()
    if out.suffix != ".keras":
        raise click.BadParameter("must end in .keras", param_hint="--out")
    options: dict[str, Any] = dict(
        size=size,
        epochs=epochs,
        seed=seed,
        members=members,
        mixup=mixup,
        hflip=hflip,
        tune_from=tune_from,
        adapt_bn=adapt_bn,
    )
    try:
        cfg = TrainConfig.for_backbone(backbone, **{k: v for k, v in options.items() if v is not None})
        cfg.validate()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=["--tune-from", "--adapt-bn"]) from exc
    try:
        with data_folder(data_dir) as folder:
            meta = run_training(folder, out, cfg, ood_dir=ood_dir)
    except RuntimeError as exc:  # the ONNX twin disagrees with Keras
        raise click.ClickException(str(exc)) from exc
    click.echo(
        json.dumps({k: meta[k] for k in ("name", "version", "temperature", "val", "onnx_max_abs_diff")})
    )


@click.command()
@data_option(TRAIN_VAL)
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="FILE.keras to write"
)
@click.argument(
    "members", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@ood_option(NAMED_KINDS)
def join(data_dir: str, out: Path, members: tuple[Path, ...], ood_dir: Path | None) -> None:
    """Join trained models (MEMBERS: FILE.keras, each with its FILE.json) into one whose logits are the mean
    of theirs; calibrate it on val and write it with both twins and its gate, as train does."""
    import json

    from covidxray.ml.training import join as run_join

    setup_logging()
    if out.suffix != ".keras":
        raise click.BadParameter("must end in .keras", param_hint="--out")
    try:
        with data_folder(data_dir) as folder:
            meta = run_join(folder, out, list(members), ood_dir=ood_dir)
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        json.dumps({k: meta[k] for k in ("name", "version", "temperature", "val", "onnx_max_abs_diff")})
    )


@click.command()
@data_option(TRAIN_VAL)
@model_option
def quantize(data_dir: str, model_path: Path | None) -> None:
    """Write the model's ONNX twins from its .keras: float (checked against Keras) and int8 (calibrated on
    training films, measured against the float twin on val), and record them."""
    import json

    from covidxray.ml.training import int8_twin_for
    from covidxray.predictors.runtime import DEFAULT_MODEL

    setup_logging()
    with data_folder(data_dir) as folder:
        entry = int8_twin_for(model_path or DEFAULT_MODEL, folder)
    click.echo(json.dumps(entry))


@click.command()
@data_option(TRAIN_VAL)
@model_option
@ood_option(NAMED_KINDS)
@click.option(
    "--flips/--no-flips",
    default=False,
    show_default=True,
    help="the layout head also learns from every image flipped left-right",
)
def gate(data_dir: str, model_path: Path | None, ood_dir: Path | None, flips: bool) -> None:
    """Fit the gate for non-frontal inputs (threshold on val); write FILE.ood.npz and update FILE.json."""
    import json

    from covidxray.ml.gate_fit import build_gate
    from covidxray.predictors.runtime import DEFAULT_MODEL

    setup_logging()
    with data_folder(data_dir) as folder:
        entry = build_gate(model_path or DEFAULT_MODEL, folder, ood_dir, flips=flips)
    click.echo(json.dumps(entry))
