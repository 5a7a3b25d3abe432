"""polar_model: Polar-V1 and the ResNet + ConvGRU baseline, losses, metrics, Lightning module."""


def load(ckpt_path, device="cpu"):
    """A trained model ready to predict: see :func:`polar_model.predictor.load`."""
    from .predictor import load as _load

    return _load(ckpt_path, device)
