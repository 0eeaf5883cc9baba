"""Training: pre-decoded arrays, chest-film augmentation, weighted fit, calibration and export."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from datetime import date
from pathlib import Path

import numpy as np

from covidxray.imaging.prepare import PREPROCESSING_VERSION, prepare
from covidxray.labels import LABELS
from covidxray.ml.config import TrainConfig
from covidxray.ml.datasets import list_images, make_dataset
from covidxray.predictors import calibration

log = logging.getLogger(__name__)
ONNX_TOLERANCE = 1e-4


def data_fingerprint(data_dir: Path) -> str:
    """sha256 over every train/val image's split, label, name and content: which data made the model."""
    digest = hashlib.sha256()
    for split in ("train", "val"):
        files, labels = list_images(data_dir / split)
        for path, label in zip(files, labels, strict=True):
            content = hashlib.sha256(path.read_bytes()).hexdigest()
            digest.update(f"{split}/{LABELS[label]}/{path.name}:{content}\n".encode())
    return digest.hexdigest()


def load_arrays(files: list[Path], size: int, workers: int = 2) -> np.ndarray:
    """Decode `files` through `prepare` into uint8 (n, size, size, 1); lossless, tensors are k/255."""

    def one(path: Path) -> np.ndarray:
        return np.round(prepare(path.read_bytes(), size).tensor * 255.0).astype(np.uint8)

    with ThreadPoolExecutor(workers) as pool:
        arrays = list(pool.map(one, files))
    return np.stack(arrays) if arrays else np.zeros((0, size, size, 1), np.uint8)


def source_of(path: Path) -> str:
    """Return the source key of a data-set file named `<source>_<patient>_<hash>.jpg` ('' if none)."""
    return path.name.split("_", 1)[0] if "_" in path.name else ""


def sample_weights(labels: np.ndarray, sources: list[str], balance: float) -> np.ndarray:
    """Class-balanced weights, times inverse (source, label) frequency to the power `balance`, mean 1."""
    n_classes = len(LABELS)
    class_counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = len(labels) / (n_classes * np.maximum(class_counts[labels], 1.0))
    groups = Counter(zip(sources, labels.tolist(), strict=True))
    for i, key in enumerate(zip(sources, labels.tolist(), strict=True)):
        share = groups[key] / class_counts[key[1]]
        weights[i] *= share ** (-balance)
    return (weights / weights.mean()).astype(np.float32)


def fit_member(data: tuple, cfg: TrainConfig, seed: int, verbose: int = 1):  # noqa: ANN201
    """Train one network from `seed` on (x_train, y_train, w_train, x_val, y_val); return it, its history."""
    import keras

    from covidxray.ml.model import build_model, logits_model

    x_train, y_train, w_train, x_val, y_val = data
    if cfg.pretrained:
        from covidxray.ml.finetune import fit_pretrained, fit_top

        tune = fit_top if cfg.tune_from > 0 else fit_pretrained
        return tune(data, replace(cfg, seed=seed), seed, verbose)
    keras.utils.set_random_seed(seed)
    model = build_model(cfg.size, cfg.widths, len(LABELS), cfg.dropout, cfg.blocks)
    trainable = logits_model(model)
    steps = cfg.epochs * int(np.ceil(len(x_train) / cfg.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, steps, warmup_target=None)
    trainable.compile(
        optimizer=keras.optimizers.AdamW(
            schedule, weight_decay=cfg.weight_decay, use_ema=cfg.ema > 0, ema_momentum=cfg.ema or 0.99
        ),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
    )
    one_hot = np.eye(len(LABELS), dtype=np.float32)
    callbacks: list = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if cfg.ema > 0 else []
    callbacks.append(
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience, restore_best_weights=True)
    )
    member_cfg = replace(cfg, seed=seed)
    history = trainable.fit(
        make_dataset(x_train, one_hot[y_train], w_train, member_cfg, train=True),
        validation_data=make_dataset(x_val, one_hot[y_val], None, member_cfg, train=False),
        epochs=cfg.epochs,
        callbacks=callbacks,
        verbose=verbose,
    )
    return model, history.history


def fit(train_dir: Path, val_dir: Path, cfg: TrainConfig, verbose: int = 1):  # noqa: ANN201
    """Train `cfg.members` networks (seeds seed, seed + 1, ...) on the two folders and join them.

    Returns (model, val logits, val labels, one history per member, val films, calibration films):
    films as float32 in [0, 1], the calibration films a seeded sample of up to 128 training films.
    """
    from covidxray.ml.model import ensemble

    train_files, y_train = list_images(train_dir)
    val_files, y_val = list_images(val_dir)
    if len(train_files) == 0 or len(val_files) == 0:
        raise ValueError(f"no images under {train_dir} or {val_dir}")
    log.info("decoding %d training and %d validation images", len(train_files), len(val_files))
    x_train, x_val = load_arrays(train_files, cfg.size), load_arrays(val_files, cfg.size)
    w_train = sample_weights(y_train, [source_of(p) for p in train_files], cfg.source_balance)
    data = (x_train, y_train, w_train, x_val, y_val)
    members, histories = [], []
    for i in range(cfg.members):
        log.info("training member %d of %d (seed %d)", i + 1, cfg.members, cfg.seed + i)
        member, history = fit_member(data, cfg, cfg.seed + i, verbose)
        members.append(member)
        histories.append(history)
    model = ensemble(members)
    films = x_val.astype(np.float32) / 255.0
    val_logits = np.asarray(model.predict(films, verbose=0)[0])
    calib = x_train[calibration_pick(len(x_train), cfg.seed)].astype(np.float32) / 255.0
    return model, val_logits, y_val, histories, films, calib


def calibration_pick(n: int, seed: int) -> np.ndarray:
    """The sorted indices of the seeded sample of up to 128 of `n` training films that calibrate int8."""
    return np.sort(np.random.default_rng(seed).permutation(n)[:128])


def calibration_films(train_files: list[Path], size: int, seed: int) -> np.ndarray:
    """The calibration films (`calibration_pick`) decoded at `size`, as float32 in [0, 1]."""
    picked = [train_files[i] for i in calibration_pick(len(train_files), seed)]
    return load_arrays(picked, size).astype(np.float32) / 255.0


def train(
    data_dir: str | Path, out: str | Path, cfg: TrainConfig, verbose: int = 1, ood_dir: Path | None = None
) -> dict:
    """Train, calibrate on val, write FILE.keras, FILE.onnx, FILE.int8.onnx and FILE.json; return the meta."""
    data_dir, out = Path(data_dir), Path(out)
    started = time.monotonic()
    model, val_logits, y_val, histories, x_val, calib = fit(
        data_dir / "train", data_dir / "val", cfg, verbose
    )
    training = {
        "config": asdict(cfg),
        "members": [member_summary(cfg.seed + i, h) for i, h in enumerate(histories)],
        "seconds": round(time.monotonic() - started, 1),
    }
    return finish(model, data_dir, out, training, (x_val, y_val, val_logits), calib, ood_dir)


def join(data_dir: str | Path, out: str | Path, members: list[Path], ood_dir: Path | None = None) -> dict:
    """Join trained models (each FILE.keras with its FILE.json; the same input size, labels and
    preprocessing) into one whose logits are the mean of theirs (`model.ensemble`), calibrate it on val
    and write it as `train` does; return the meta."""
    import keras

    from covidxray.ml.model import FEATURES, ensemble

    data_dir, out = Path(data_dir), Path(out)
    metas = [json.loads(p.with_suffix(".json").read_text()) for p in members]
    kinds = {(m["input_size"], tuple(m["labels"]), m["preprocessing_version"]) for m in metas}
    if len(kinds) != 1 or len(members) < 2:
        raise ValueError(
            f"join needs two or more models of one input size, labels and preprocessing: {kinds}"
        )
    if tuple(metas[0]["labels"]) != LABELS or metas[0]["preprocessing_version"] != PREPROCESSING_VERSION:
        raise ValueError("the models were made for other labels or another preprocessing than today's")
    size = int(metas[0]["input_size"])
    loaded = [keras.models.load_model(p, compile=False) for p in members]
    grids = {tuple(m.get_layer(FEATURES).output.shape[1:3]) for m in loaded}
    if len(grids) != 1:
        raise ValueError(
            f"the models' last feature maps differ in size ({sorted(grids)}): their heatmaps cannot add"
        )
    model = ensemble(loaded)
    train_files, _ = list_images(data_dir / "train")
    val_files, y_val = list_images(data_dir / "val")
    x_val = load_arrays(val_files, size).astype(np.float32) / 255.0
    calib = calibration_films(train_files, size, seed=0)
    val_logits = np.asarray(model.predict(x_val, verbose=0)[0])
    training = {
        "joined": [
            {
                "file": p.name,
                "name": m["name"],
                "version": m["version"],
                "val": m["val"],
                "config": m["training"].get("config"),
                "seconds": m["training"].get("seconds"),
            }
            for p, m in zip(members, metas, strict=True)
        ],
        "seconds": round(sum(float(m["training"].get("seconds") or 0) for m in metas), 1),
    }
    return finish(model, data_dir, out, training, (x_val, y_val, val_logits), calib, ood_dir)


def finish(
    model,  # noqa: ANN001
    data_dir: Path,
    out: Path,
    training: dict,
    val: tuple[np.ndarray, np.ndarray, np.ndarray],
    calib: np.ndarray,
    ood_dir: Path | None,
) -> dict:
    """Calibrate on val (films, labels, logits), write FILE.keras, both twins, FILE.json and the gate."""
    x_val, y_val, val_logits = val
    temperature = calibration.fit_temperature(val_logits, y_val)
    ece_before = calibration.expected_calibration_error(calibration.softmax(val_logits), y_val)
    ece_after = calibration.expected_calibration_error(calibration.softmax(val_logits, temperature), y_val)
    meta = {
        "name": out.stem,
        "version": f"{date.today():%Y.%m.%d}",
        "labels": list(LABELS),
        "input_size": int(x_val.shape[1]),
        "preprocessing_version": PREPROCESSING_VERSION,
        "data_fingerprint": data_fingerprint(data_dir),
        "temperature": temperature,
        "outputs": {"logits": "logits", "features": "features"},
        "val": {
            "n": int(len(y_val)),
            "accuracy": float((val_logits.argmax(1) == y_val).mean()),
            "ece_uncalibrated": ece_before,
            "ece": ece_after,
        },
        "training": training,
    }
    meta = save_model(model, out, meta, probe=x_val[:12])
    meta = add_int8_twin(out, meta, calib, x_val, y_val)
    from covidxray.ml.gate_fit import build_gate

    return {**meta, "ood": build_gate(out, data_dir, ood_dir)}


def member_summary(seed: int, history: dict) -> dict:
    """One member's seed, epochs run, kept epoch and val figures at that epoch (for the metadata)."""
    losses = history.get("val_loss", [])
    best = int(np.argmin(losses)) if losses else None
    return {
        "seed": seed,
        "epochs_run": len(history.get("loss", [])),
        "best_epoch": None if best is None else best + 1,
        "val_loss": None if best is None else float(losses[best]),
        "val_accuracy": None if best is None else float(history["val_accuracy"][best]),
    }


def save_model(model, out: Path, meta: dict, probe: np.ndarray | None = None) -> dict:  # noqa: ANN001
    """Write FILE.keras, its ONNX twin FILE.onnx (checked against Keras on `probe`) and FILE.json."""
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    onnx_path = out.with_suffix(".onnx")
    diffs = export_twin(model, onnx_path, probe)
    meta = {
        **meta,
        "onnx_max_abs_diff": diffs,
        "serve": "onnx-float",
        "twins": {"onnx-float": {"file": onnx_path.name, "max_abs_diff_vs_keras": diffs}},
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info("wrote %s, %s and %s", out, onnx_path, out.with_suffix(".json"))
    return meta


def export_twin(model, onnx_path: Path, probe: np.ndarray | None = None) -> dict:  # noqa: ANN001
    """Write the float ONNX twin of the Keras `model` and check it against Keras on noise and `probe`."""
    from covidxray.ml.model import check_twin, export_onnx

    export_onnx(model, onnx_path)
    size = int(model.inputs[0].shape[1])
    noise = np.random.default_rng(0).random((4, size, size, 1), dtype=np.float32)
    probe = noise if probe is None else np.concatenate([noise, probe.astype(np.float32)])
    return check_twin(model, onnx_path, probe, ONNX_TOLERANCE)


def int8_twin_for(model_path: Path, data_dir: Path) -> dict:
    """Write both twins of an existing model (FILE.keras with FILE.json) with today's export: the float
    twin (checked against Keras) and the int8 twin (measured against it on val); return the int8 entry."""
    import keras

    meta = json.loads(model_path.with_suffix(".json").read_text())
    size = int(meta["input_size"])
    train_files, _ = list_images(data_dir / "train")
    val_files, y_val = list_images(data_dir / "val")
    model = keras.models.load_model(model_path, compile=False)
    diffs = export_twin(model, model_path.with_suffix(".onnx"), load_arrays(val_files[:16], size) / 255.0)
    float_entry = {"file": model_path.with_suffix(".onnx").name, "max_abs_diff_vs_keras": diffs}
    meta["onnx_max_abs_diff"] = diffs
    meta["twins"] = {**meta.get("twins", {}), "onnx-float": float_entry}
    seed = int(meta.get("training", {}).get("config", {}).get("seed", 0))
    calib = calibration_films(train_files, size, seed)
    x_val = load_arrays(val_files, size).astype(np.float32) / 255.0
    meta = add_int8_twin(model_path, meta, calib, x_val, y_val)
    fitted_on = meta.get("ood", {}).get("fitted_on", "onnx-float")
    if "ood" in meta and fitted_on != meta["serve"]:
        log.warning("the gate was fitted on the %s twin's features; refit it: covidxray gate", fitted_on)
    return meta["twins"]["onnx-int8"]


def add_int8_twin(out: Path, meta: dict, calib: np.ndarray, x_val: np.ndarray, y_val: np.ndarray) -> dict:
    """Write FILE.int8.onnx (calibrated on training films `calib`), measure it against the float twin on
    val, and record it in FILE.json; return the metadata."""
    from covidxray.ml.quantize import MIN_AGREEMENT, compare, quantize_int8, run_onnx

    float_path, int8_path = out.with_suffix(".onnx"), out.with_suffix(".int8.onnx")
    quantize_int8(float_path, int8_path, calib)
    figures = compare(run_onnx(float_path, x_val), run_onnx(int8_path, x_val), y_val, meta["temperature"])
    entry = {"file": int8_path.name, "val": figures, "min_top1_agreement": MIN_AGREEMENT}
    # Served by default only while it agrees with the float twin within the bound.
    serve = "onnx-int8" if figures["top1_agreement"] >= MIN_AGREEMENT else "onnx-float"
    meta = {**meta, "serve": serve, "twins": {**meta["twins"], "onnx-int8": entry}}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info("wrote %s: top-1 agreement with the float twin %.3f", int8_path, figures["top1_agreement"])
    return meta
