"""Model architectures, by name."""

from .msmla import MSMLA, msmla18, msmla50

MODELS = {"msmla18": msmla18, "msmla50": msmla50}


def build_model(name: str, channels: int, classes: int = 17, **options):
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None
    return factory(channels=channels, classes=classes, **options)


__all__ = ["MSMLA", "MODELS", "build_model", "msmla18", "msmla50"]
