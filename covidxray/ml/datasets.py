"""Data folders for training and evaluation: a local folder, or `gs://bucket/prefix` copied locally."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import numpy as np

from covidxray.labels import LABELS
from covidxray.ml.config import TrainConfig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif"}


@contextmanager
def local_folder(location: str) -> Iterator[Path]:
    """Yield a local folder holding the data at `location`: a path, or gs://bucket/prefix copied locally.

    For Cloud Storage the copy keeps the folder's own name, and a `manifest.csv` beside the folder is
    copied beside it too, so that evaluation finds patients and sources as it does locally.
    """
    if not location.startswith("gs://"):
        path = Path(location)
        if not path.is_dir():
            raise FileNotFoundError(f"no folder {location}")
        yield path
        return
    parsed = urlparse(location)
    prefix = PurePosixPath(parsed.path.strip("/"))
    with tempfile.TemporaryDirectory(prefix="covidxray-data-") as tmp:
        root = Path(tmp) / (prefix.name or parsed.netloc)
        if not _download(parsed.netloc, str(prefix) if prefix.parts else "", root):
            raise FileNotFoundError(f"no objects under {location}")
        yield root


def _download(bucket_name: str, prefix: str, root: Path) -> int:
    """Copy every object under `prefix` into `root` (and the manifest beside it); return how many."""
    from google.cloud import storage  # type: ignore[attr-defined]

    client = storage.Client()
    count = 0
    for blob in client.list_blobs(bucket_name, prefix=f"{prefix}/" if prefix else None):
        relative = blob.name[len(prefix) + 1 :] if prefix else blob.name
        target = (root / relative).resolve()
        if not relative or relative.endswith("/") or not target.is_relative_to(root.resolve()):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(str(target))
        count += 1
    parent = str(PurePosixPath(prefix).parent) if prefix else ""
    manifest = client.bucket(bucket_name).blob(
        f"{parent}/manifest.csv" if parent not in ("", ".") else "manifest.csv"
    )
    if count and manifest.exists():
        manifest.download_to_filename(str(root.parent / "manifest.csv"))
    return count


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
