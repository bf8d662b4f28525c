"""Model architectures, by name.

``msmla18`` / ``msmla50``: MSMLA (Kim et al. 2021); ``sen2lcz``: Sen2LCZ-Net-MF (Qiu et al.
2020, outputs probabilities); ``resnet20``: the So2Sat LCZ42 ResNet v2 (32x32 only): *patch*
models, one class vector per patch. ``unet``: a U-Net, a *dense* model, class scores for
every pixel of a tile (:mod:`training.models.unet`). The random-forest baseline is not a
torch model: see :mod:`training.forest`.
"""

from ..config import DENSE_MODEL_NAMES
from .msmla import MSMLA, count_parameters, msmla18, msmla50
from .resnet20 import resnet20
from .sen2lcz import sen2lcz
from .unet import UNet, unet

MODELS = {"msmla18": msmla18, "msmla50": msmla50, "sen2lcz": sen2lcz, "resnet20": resnet20,
          "unet": unet}
DENSE_MODELS = frozenset(DENSE_MODEL_NAMES)
"""Models that predict every pixel of a tile (trained on tiles with label masks); the others
predict one class vector per patch (trained on patches)."""


def build_model(name: str, channels: int, classes: int = 17, **options):
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None
    return factory(channels=channels, classes=classes, **options)


def model_kind(name: str) -> str:
    """``dense`` or ``patch`` (the model card's ``lcz.model_kind``) for a model name."""
    return "dense" if name in DENSE_MODELS else "patch"


def outputs_probabilities(model) -> bool:
    """True for models whose exported output is probabilities (Sen2LCZ-Net averages softmaxes)."""
    return bool(getattr(model, "outputs_probabilities", False))


__all__ = ["DENSE_MODELS", "MODELS", "MSMLA", "UNet", "build_model", "count_parameters",
           "model_kind", "msmla18", "msmla50", "outputs_probabilities", "resnet20", "sen2lcz",
           "unet"]
