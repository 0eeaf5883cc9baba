"""Fine-tuning a pretrained backbone: a head warm-up on frozen features, then the network.

The warm-up fits the output layer on the backbone's pooled features of the (unaugmented) training
films, which takes seconds. Then either the top blocks train on cached outputs of the frozen lower
blocks (`TrainConfig.tune_from` > 0: each epoch reads one of `copies` cached, differently augmented
passes of the training films, so an epoch costs only the top's forward and backward passes; with
`TrainConfig.adapt_bn` their batch-norm statistics are first re-estimated on the films), or the whole
network trains with augmentation, the backbone at a lower learning rate than the head (two
AdamW optimisers in one training step). Both stop early on val loss.
"""

from __future__ import annotations

import logging

import numpy as np

from covidxray.labels import LABELS

log = logging.getLogger(__name__)


def pooled_features(model, x: np.ndarray, batch_size: int = 32) -> np.ndarray:  # noqa: ANN001
    """The pooled last feature maps of uint8 films `x` (n, size, size, 1), in inference mode."""
    out = []
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size].astype(np.float32) / 255.0
        out.append(np.asarray(model(batch, training=False)[1]).mean(axis=(1, 2)))
    return np.concatenate(out)


def warm_up_head(model, x_train: np.ndarray, y_train: np.ndarray, w_train: np.ndarray, cfg) -> dict:  # noqa: ANN001
    """Fit the output layer alone on frozen pooled features (weighted, label-smoothed); return its history."""
    from covidxray.ml.model import output_layer

    return fit_probe(output_layer(model), pooled_features(model, x_train), y_train, w_train, cfg)


def fit_probe(head, feats: np.ndarray, y_train: np.ndarray, w_train: np.ndarray, cfg) -> dict:  # noqa: ANN001
    """Fit the Dense layer `head` on pooled features `feats` (weighted, label-smoothed); return history."""
    import keras

    inputs = keras.Input((feats.shape[1],))
    probe = keras.Model(inputs, keras.layers.Dense(len(LABELS))(keras.layers.Dropout(cfg.dropout)(inputs)))
    probe.compile(
        optimizer=keras.optimizers.AdamW(1e-3, weight_decay=cfg.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
    )
    targets = np.eye(len(LABELS), dtype=np.float32)[y_train]
    history = probe.fit(
        feats, targets, sample_weight=w_train, epochs=cfg.head_epochs, batch_size=64, verbose=0
    )
    head.set_weights(probe.layers[-1].get_weights())
    log.info("head warm-up: train accuracy %.3f", history.history["accuracy"][-1])
    return history.history


def two_rate_model(model, backbone_rate, head_rate, weight_decay: float, loss):  # noqa: ANN001, ANN201
    """A logits-only view of `model` whose training step gives the backbone its own optimiser."""
    import keras
    import tensorflow as tf

    from covidxray.ml.model import backbone_of

    backbone = backbone_of(model)
    assert backbone is not None
    backbone_paths = {v.path for v in backbone.trainable_variables}

    class TwoRate(keras.Model):
        """Applies `backbone_optimizer` to the backbone's variables and the compiled optimiser to the rest."""

        def train_step(self, data):  # noqa: ANN001, ANN202
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            with tf.GradientTape() as tape:
                y_pred = self(x, training=True)
                loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight)
            variables = self.trainable_variables
            grads = tape.gradient(loss, variables)
            ours = [(g, v) for g, v in zip(grads, variables, strict=True) if v.path in backbone_paths]
            rest = [(g, v) for g, v in zip(grads, variables, strict=True) if v.path not in backbone_paths]
            self.backbone_optimizer.apply([g for g, _ in ours], [v for _, v in ours])
            self.optimizer.apply([g for g, _ in rest], [v for _, v in rest])
            for metric in self.metrics:
                if metric.name == "loss":
                    metric.update_state(loss)
                else:
                    metric.update_state(y, y_pred, sample_weight)
            return {m.name: m.result() for m in self.metrics}

    trainable = TwoRate(model.inputs, model.outputs[0])
    trainable.backbone_optimizer = keras.optimizers.AdamW(backbone_rate, weight_decay=weight_decay)
    trainable.backbone_optimizer.build(backbone.trainable_variables)
    trainable.compile(
        optimizer=keras.optimizers.AdamW(head_rate, weight_decay=weight_decay),
        loss=loss,
        metrics=["accuracy"],
    )
    return trainable


def fit_pretrained(data: tuple, cfg, seed: int, verbose: int = 1):  # noqa: ANN001, ANN201
    """Warm up the head, then fine-tune the whole network; return the model and its history."""
    import keras

    from covidxray.ml.datasets import make_dataset
    from covidxray.ml.model import build_pretrained

    x_train, y_train, w_train, x_val, y_val = data
    keras.utils.set_random_seed(seed)
    model = build_pretrained(cfg.backbone, cfg.size, len(LABELS), cfg.dropout, bn_momentum=cfg.bn_momentum)
    head_history = warm_up_head(model, x_train, y_train, w_train, cfg)
    per_epoch = int(np.ceil(len(x_train) / cfg.batch_size))
    steps, warm = max(2, cfg.epochs * per_epoch), min(per_epoch, max(1, cfg.epochs * per_epoch // 4))
    rates = [  # a linear warm-up over the first epoch, then cosine decay
        keras.optimizers.schedules.CosineDecay(0.0, steps - warm, warmup_target=rate, warmup_steps=warm)
        for rate in (cfg.backbone_learning_rate, cfg.learning_rate)
    ]
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing)
    trainable = two_rate_model(model, rates[0], rates[1], cfg.weight_decay, loss)
    one_hot = np.eye(len(LABELS), dtype=np.float32)
    history = trainable.fit(
        make_dataset(x_train, one_hot[y_train], w_train, cfg, train=True),
        validation_data=make_dataset(x_val, one_hot[y_val], None, cfg, train=False),
        epochs=cfg.epochs,
        callbacks=[
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=cfg.patience, restore_best_weights=True
            )
        ],
        verbose=verbose,
    )
    return model, {**history.history, "head_accuracy": head_history["accuracy"][-1:]}


def split_pretrained(cfg):  # noqa: ANN001, ANN201
    """The whole pretrained model, its frozen lower part (grey films to the input of block `cfg.tune_from`)
    and a trainable copy of its upper part ending in the same head (pooling, dropout, logits)."""
    import keras
    from keras import layers

    from covidxray.ml.efficientnet_lite import build_top, cut_layer, to_rgb
    from covidxray.ml.model import LOGITS, backbone_of, build_pretrained

    model = build_pretrained(cfg.backbone, cfg.size, len(LABELS), cfg.dropout)
    net = backbone_of(model)
    assert net is not None
    grey = keras.Input((cfg.size, cfg.size, 1), name="image")
    lower = keras.Model(net.inputs, net.get_layer(cut_layer(cfg.backbone, cfg.tune_from)).output)
    bottom = keras.Model(grey, lower(to_rgb(grey)), name="frozen_lower_blocks")
    upper = build_top(cfg.backbone, cfg.tune_from, tuple(bottom.output.shape[1:]))
    for layer in upper.layers:
        if layer.weights:
            layer.set_weights(net.get_layer(layer.name).get_weights())
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False  # ImageNet statistics, as in the whole model
    acts = keras.Input(upper.input.shape[1:])
    pooled = layers.GlobalAveragePooling2D()(upper(acts))
    logits = layers.Dense(len(LABELS), name=LOGITS)(layers.Dropout(cfg.dropout)(pooled))
    return model, bottom, keras.Model(acts, logits, name="trainable_upper_blocks")


def activations(bottom, films: np.ndarray, augment=None, batch_size: int = 32) -> np.ndarray:  # noqa: ANN001
    """The frozen lower blocks' output for uint8 films (n, size, size, 1), augmented when `augment` is
    given; float16 to halve the cache."""
    out = []
    for start in range(0, len(films), batch_size):
        batch = films[start : start + batch_size].astype(np.float32) / 255.0
        if augment is not None:
            batch = np.clip(np.asarray(augment(batch, training=True)), 0.0, 1.0)
        out.append(np.asarray(bottom(batch, training=False)).astype(np.float16))
    return np.concatenate(out)


def fit_top(data: tuple, cfg, seed: int, verbose: int = 1):  # noqa: ANN001, ANN201
    """Warm up the head, then train the blocks from `cfg.tune_from` up on cached lower-block outputs of
    `cfg.copies` augmented passes (the first unaugmented); return the whole model and its history."""
    import keras

    from covidxray.ml.datasets import augmenter
    from covidxray.ml.model import LOGITS

    x_train, y_train, w_train, x_val, y_val = data
    keras.utils.set_random_seed(seed)
    model, bottom, top = split_pretrained(cfg)
    augment = augmenter(seed, cfg.hflip)
    log.info("caching the frozen blocks' output of %d passes over %d films", cfg.copies, len(x_train))
    copies = [activations(bottom, x_train, augment if c else None) for c in range(cfg.copies)]
    val = activations(bottom, x_val).astype(np.float32)
    if cfg.adapt_bn:
        adapt_batch_norm(upper_blocks(top), copies[0])
    pooled = keras.Model(top.inputs, top.layers[-3].output)  # the pooling layer, before the dropout
    feats = np.concatenate([np.asarray(pooled(copies[0][s : s + 64])) for s in range(0, len(x_train), 64)])
    head_history = fit_probe(top.get_layer(LOGITS), feats, y_train, w_train, cfg)
    per_epoch = int(np.ceil(len(x_train) / cfg.batch_size))
    rate = keras.optimizers.schedules.CosineDecay(
        0.0,
        max(1, (cfg.epochs - 1) * per_epoch),
        warmup_target=cfg.backbone_learning_rate,
        warmup_steps=per_epoch,
    )
    top.compile(
        optimizer=keras.optimizers.AdamW(rate, weight_decay=cfg.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
    )
    one_hot = np.eye(len(LABELS), dtype=np.float32)
    history: dict[str, list] = {}
    best, best_weights, waited = np.inf, top.get_weights(), 0
    for epoch in range(cfg.epochs):
        step = top.fit(
            copies[epoch % cfg.copies].astype(np.float32),
            one_hot[y_train],
            sample_weight=w_train,
            batch_size=cfg.batch_size,
            validation_data=(val, one_hot[y_val]),
            initial_epoch=epoch,
            epochs=epoch + 1,
            verbose=verbose,
        )
        for key, values in step.history.items():
            history.setdefault(key, []).extend(values)
        if history["val_loss"][-1] < best:
            best, best_weights, waited = history["val_loss"][-1], top.get_weights(), 0
        elif (waited := waited + 1) >= cfg.patience:
            break
    top.set_weights(best_weights)
    merge_top(model, top)
    return model, {**history, "head_accuracy": head_history["accuracy"][-1:]}


def adapt_batch_norm(net, x: np.ndarray, batch_size: int = 64) -> None:  # noqa: ANN001
    """Re-estimate every batch-norm layer's moving mean and variance in `net` on its inputs `x` (AdaBN).

    Layer by layer, in order, each on the outputs of the layers before it with their statistics already
    re-estimated, so each layer normalises what it will see; the scales and shifts are kept.
    """
    import keras
    from keras import layers

    for layer in net.layers:
        if not isinstance(layer, layers.BatchNormalization):
            continue
        probe = keras.Model(net.inputs[0], layer.input)
        total, squares, count = np.zeros(layer.moving_mean.shape), np.zeros(layer.moving_mean.shape), 0
        for start in range(0, len(x), batch_size):
            seen = np.asarray(probe(x[start : start + batch_size].astype(np.float32), training=False))
            flat = seen.reshape(-1, seen.shape[-1]).astype(np.float64)
            total, squares, count = total + flat.sum(0), squares + (flat**2).sum(0), count + len(flat)
        mean = total / count
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign(np.maximum(squares / count - mean**2, 0.0).astype(np.float32))


def upper_blocks(top):  # noqa: ANN001, ANN201
    """The nested model of upper blocks inside `top` (from `split_pretrained`)."""
    return next(layer for layer in top.layers if hasattr(layer, "layers"))


def merge_top(model, top) -> None:  # noqa: ANN001
    """Copy the trained upper blocks and head of `top` (from `split_pretrained`) into the whole `model`."""
    from covidxray.ml.model import LOGITS, backbone_of

    net = backbone_of(model)
    assert net is not None
    upper = upper_blocks(top)
    for layer in upper.layers:
        if layer.weights:
            net.get_layer(layer.name).set_weights(layer.get_weights())
    model.get_layer(LOGITS).set_weights(top.get_layer(LOGITS).get_weights())
