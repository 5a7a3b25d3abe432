"""polar_model: Polar-V1 and the ResNet + ConvGRU baseline, losses, metrics (the model layer),
and :mod:`polar_model.training` (the training layer: Lightning module, trainer, evaluation)."""


def load(ckpt_path, device="cpu"):
    """A trained model ready to predict: see :func:`polar_model.training.predictor.load`
    (imported here lazily: importing ``polar_model`` does not import the training layer)."""
    from polar_model.training.predictor import load as _load

    return _load(ckpt_path, device)
