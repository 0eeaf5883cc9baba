"""Training and evaluation (never loaded by the services): the networks (`model`,
`efficientnet_lite`, `torch_weights`), the data (`datasets`), the recipe (`config`, `training`,
`finetune`), the gate's fitting (`gate_fit`), `evaluation` and `quantize`.

May import imaging, predictors and the base modules."""
