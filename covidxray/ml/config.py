"""The training recipe: the hyper-parameters of one run (stored in the model's metadata)."""

from __future__ import annotations

from dataclasses import dataclass

BACKBONES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "scratch")


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (stored in the metadata JSON).

    The defaults are the shipped recipe (EfficientNet-Lite0 at 288 px, blocks 11 up trained on AdaBN
    statistics); `for_backbone("scratch")` gives the recipe of the network trained from scratch.
    """

    backbone: str = "efficientnet-lite0"
    size: int = 288
    widths: tuple[int, ...] = (16, 32, 64, 128, 192)  # scratch only
    blocks: int = 2  # residual blocks per stage (scratch only)
    epochs: int = 15
    head_epochs: int = 60  # output-layer warm-up on frozen features (pretrained only)
    batch_size: int = 32
    learning_rate: float = 1e-3  # the head's (the whole network's for scratch)
    backbone_learning_rate: float = 1e-4  # pretrained only (the upper blocks' peak rate)
    bn_momentum: float = 0.0  # pretrained only; 0: ImageNet batch-norm statistics frozen, else re-estimated
    tune_from: int = 11  # pretrained only: the first block that trains (0: the whole network)
    adapt_bn: bool = True  # tune_from > 0: re-estimate those blocks' batch-norm statistics first
    copies: int = 4  # tune_from > 0: cached passes over the training films (all but the first augmented)
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    dropout: float = 0.2
    patience: int = 5
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
                size=224,
                adapt_bn=False,
                epochs=45,
                batch_size=32,
                learning_rate=2e-3,
                dropout=0.3,
                patience=12,
                ema=0.99,
                seed=20261125,
            )
        elif overrides.get("tune_from") == 0:
            base.update(adapt_bn=False)  # the whole network trains: no cached blocks to adapt
        return cls(**{**base, **overrides})  # type: ignore[arg-type]

    def validate(self) -> None:
        """Raise ValueError when the backbone has no block `tune_from`, or `adapt_bn` nothing to adapt."""
        if self.adapt_bn and not (self.pretrained and self.tune_from):
            raise ValueError("adapting batch norm needs a pretrained backbone and tune_from > 0")
        if self.pretrained and self.tune_from:
            from covidxray.ml.efficientnet_lite import cut_layer

            cut_layer(self.backbone, self.tune_from)

    @property
    def pretrained(self) -> bool:
        return self.backbone != "scratch"
