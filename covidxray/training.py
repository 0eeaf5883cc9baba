"""Training: pre-decoded arrays, chest-film augmentation, weighted fit, calibration and export."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import date
from pathlib import Path

import numpy as np

from . import calibration
from .imaging import PREPROCESSING_VERSION, prepare
from .labels import LABELS

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif"}
ONNX_TOLERANCE = 1e-4


BACKBONES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "scratch")


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (stored in the metadata JSON).

    The defaults fine-tune the pretrained backbone; `for_backbone("scratch")` gives the recipe of the
    network trained from scratch.
    """

    backbone: str = "efficientnet-lite0"
    size: int = 224
    widths: tuple[int, ...] = (16, 32, 64, 128, 192)  # scratch only
    blocks: int = 2  # residual blocks per stage (scratch only)
    epochs: int = 10
    head_epochs: int = 60  # output-layer warm-up on frozen features (pretrained only)
    batch_size: int = 16
    learning_rate: float = 1e-3  # the head's (the whole network's for scratch)
    backbone_learning_rate: float = 2e-5  # pretrained only
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    dropout: float = 0.2
    patience: int = 4
    source_balance: float = 0.5  # exponent of the inverse (source, label) frequency weight
    ema: float = 0.0  # exponential moving average of the weights (0: off; scratch only)
    mixup: float = 0.0  # Beta(a, a) parameter of mixup within each batch (0: off)
    hflip: bool = False  # random left-right flips
    seed: int = 20261203
    members: int = 1  # networks trained from seeds seed, seed + 1, ... whose logits are averaged

    @classmethod
    def for_backbone(cls, backbone: str, **overrides: object) -> TrainConfig:
        """The default recipe for `backbone`, with `overrides` on top."""
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; known: {', '.join(BACKBONES)}")
        base: dict[str, object] = {"backbone": backbone}
        if backbone == "scratch":
            base.update(
                epochs=45,
                batch_size=32,
                learning_rate=2e-3,
                dropout=0.3,
                patience=12,
                ema=0.99,
                seed=20261125,
            )
        return cls(**{**base, **overrides})  # type: ignore[arg-type]

    @property
    def pretrained(self) -> bool:
        return self.backbone != "scratch"


def list_images(folder: Path) -> tuple[list[Path], np.ndarray]:
    """Return the image files under `folder/<label>/` and their label indices."""
    files: list[Path] = []
    labels: list[int] = []
    for index, label in enumerate(LABELS):
        for path in sorted((folder / label).glob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                files.append(path)
                labels.append(index)
    return files, np.asarray(labels, dtype=np.int64)


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


def augmenter(seed: int, hflip: bool = False):  # noqa: ANN201 (a keras.Sequential; keras is imported lazily)
    """Chest-film augmentation: small rotation, shift, zoom, brightness, contrast; no vertical flips."""
    import keras
    from keras import layers

    steps = [
        layers.RandomRotation(0.025, fill_mode="constant", seed=seed),  # about ±9°
        layers.RandomTranslation(0.06, 0.06, fill_mode="constant", seed=seed + 1),
        layers.RandomZoom((-0.12, 0.08), fill_mode="constant", seed=seed + 2),
        layers.RandomBrightness(0.1, value_range=(0.0, 1.0), seed=seed + 3),
        layers.RandomContrast(0.2, seed=seed + 4),
    ]
    if hflip:
        steps.append(layers.RandomFlip("horizontal", seed=seed + 5))
    return keras.Sequential(steps, name="augment")


def mixup(alpha: float, seed: int):  # noqa: ANN201 (a tf.data map function; tensorflow is imported lazily)
    """Return a batch map that blends each example with another of the batch by a Beta(alpha, alpha) share.

    Images, one-hot targets and sample weights are blended alike.
    """
    import tensorflow as tf

    generator = tf.random.Generator.from_seed(seed)

    def blend(xb, yb, *weights):  # noqa: ANN001, ANN202
        seeds = generator.make_seeds(2)
        gammas = tf.random.stateless_gamma([2], seeds[:, 0], alpha)
        share = gammas[0] / (gammas[0] + gammas[1])
        other = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(xb)[0]), seeds[:, 1])

        def mix(t):  # noqa: ANN001, ANN202
            return share * t + (1.0 - share) * tf.gather(t, other)

        return (mix(xb), mix(yb), *(mix(w) for w in weights))

    return blend


def make_dataset(x: np.ndarray, y: np.ndarray, w: np.ndarray | None, cfg: TrainConfig, train: bool):  # noqa: ANN201
    """Build the tf.data pipeline (augmentation outside the exported model)."""
    import tensorflow as tf

    parts = (x, y) if w is None else (x, y, w)
    ds = tf.data.Dataset.from_tensor_slices(parts)
    if train:
        ds = ds.shuffle(len(x), seed=cfg.seed, reshuffle_each_iteration=True)
    ds = ds.batch(cfg.batch_size)

    def to_float(xb, *rest):  # noqa: ANN001, ANN202
        return (tf.cast(xb, tf.float32) / 255.0, *rest)

    ds = ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
    if train:
        aug = augmenter(cfg.seed, cfg.hflip)

        def augment(xb, *rest):  # noqa: ANN001, ANN202
            return (tf.clip_by_value(aug(xb, training=True), 0.0, 1.0), *rest)

        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        if cfg.mixup > 0:
            ds = ds.map(mixup(cfg.mixup, cfg.seed))
    return ds.prefetch(tf.data.AUTOTUNE)


def fit_member(data: tuple, cfg: TrainConfig, seed: int, verbose: int = 1):  # noqa: ANN201
    """Train one network from `seed` on (x_train, y_train, w_train, x_val, y_val); return it, its history."""
    import keras

    from .model import build_model, logits_model

    x_train, y_train, w_train, x_val, y_val = data
    if cfg.pretrained:
        from .finetune import fit_pretrained

        return fit_pretrained(data, replace(cfg, seed=seed), seed, verbose)
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
    from .model import ensemble

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
    pick = np.random.default_rng(cfg.seed).permutation(len(x_train))[:128]
    return model, val_logits, y_val, histories, films, x_train[np.sort(pick)].astype(np.float32) / 255.0


def train(
    data_dir: str | Path, out: str | Path, cfg: TrainConfig, verbose: int = 1, ood_dir: Path | None = None
) -> dict:
    """Train, calibrate on val, write FILE.keras, FILE.onnx, FILE.int8.onnx and FILE.json; return the meta."""
    data_dir, out = Path(data_dir), Path(out)
    started = time.monotonic()
    model, val_logits, y_val, histories, x_val, calib = fit(
        data_dir / "train", data_dir / "val", cfg, verbose
    )
    temperature = calibration.fit_temperature(val_logits, y_val)
    ece_before = calibration.expected_calibration_error(calibration.softmax(val_logits), y_val)
    ece_after = calibration.expected_calibration_error(calibration.softmax(val_logits, temperature), y_val)
    meta = {
        "name": out.stem,
        "version": f"{date.today():%Y.%m.%d}",
        "labels": list(LABELS),
        "input_size": cfg.size,
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
        "training": {
            "config": asdict(cfg),
            "members": [member_summary(cfg.seed + i, h) for i, h in enumerate(histories)],
            "seconds": round(time.monotonic() - started, 1),
        },
    }
    meta = save_model(model, out, meta, probe=x_val[:12])
    meta = add_int8_twin(out, meta, calib, x_val, y_val)
    from .gatefit import build_gate

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
    from .model import check_twin, export_onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    onnx_path = out.with_suffix(".onnx")
    export_onnx(model, onnx_path)
    size = int(model.inputs[0].shape[1])
    noise = np.random.default_rng(0).random((4, size, size, 1), dtype=np.float32)
    probe = noise if probe is None else np.concatenate([noise, probe.astype(np.float32)])
    diffs = check_twin(model, onnx_path, probe, ONNX_TOLERANCE)
    meta = {
        **meta,
        "onnx_max_abs_diff": diffs,
        "serve": "onnx-float",
        "twins": {"onnx-float": {"file": onnx_path.name, "max_abs_diff_vs_keras": diffs}},
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info("wrote %s, %s and %s", out, onnx_path, out.with_suffix(".json"))
    return meta


def int8_twin_for(model_path: Path, data_dir: Path) -> dict:
    """Give an existing model (FILE.keras with FILE.onnx and FILE.json) its int8 twin; return its entry."""
    meta = json.loads(model_path.with_suffix(".json").read_text())
    meta.setdefault("serve", "onnx-float")
    float_entry = {"file": model_path.with_suffix(".onnx").name}
    if "onnx_max_abs_diff" in meta:
        float_entry["max_abs_diff_vs_keras"] = meta["onnx_max_abs_diff"]
    meta["twins"] = {"onnx-float": float_entry, **meta.get("twins", {})}
    size = int(meta["input_size"])
    train_files, _ = list_images(data_dir / "train")
    val_files, y_val = list_images(data_dir / "val")
    seed = int(meta.get("training", {}).get("config", {}).get("seed", 0))
    pick = np.sort(np.random.default_rng(seed).permutation(len(train_files))[:128])
    calib = load_arrays([train_files[i] for i in pick], size).astype(np.float32) / 255.0
    x_val = load_arrays(val_files, size).astype(np.float32) / 255.0
    return add_int8_twin(model_path, meta, calib, x_val, y_val)["twins"]["onnx-int8"]


def add_int8_twin(out: Path, meta: dict, calib: np.ndarray, x_val: np.ndarray, y_val: np.ndarray) -> dict:
    """Write FILE.int8.onnx (calibrated on training films `calib`), measure it against the float twin on
    val, and record it in FILE.json; return the metadata."""
    from .quantize import compare, quantize_int8, run_onnx

    float_path, int8_path = out.with_suffix(".onnx"), out.with_suffix(".int8.onnx")
    quantize_int8(float_path, int8_path, calib)
    figures = compare(run_onnx(float_path, x_val), run_onnx(int8_path, x_val), y_val, meta["temperature"])
    meta = {**meta, "twins": {**meta["twins"], "onnx-int8": {"file": int8_path.name, "val": figures}}}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info("wrote %s: top-1 agreement with the float twin %.3f", int8_path, figures["top1_agreement"])
    return meta
