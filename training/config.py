"""The options of a training run, declared once: :class:`TrainConfig`.

Each field carries its command-line help (and type, choices, switch style) as field
metadata, so that ``python -m training train``'s options (:func:`add_options`,
:func:`given_options`), the config file (:func:`load_config_file`) and the run itself all
read the one list: adding an option is one field here. Values are merged as
defaults < dense-model defaults (:data:`DENSE_DEFAULTS`, for ``--model unet``) < ``--setup``
preset < config file < command-line options (:func:`make_config`).

Imports neither torch nor numpy: the command line builds its parser from here, and
``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass


class TrainingError(RuntimeError):
    """A training run that cannot go on; the message says why and what to do."""


def option(default, help: str | None = None, *, choices: tuple | None = None,
           items: type | None = None, switch: str = "both", cli: bool = True):
    """A :class:`TrainConfig` field with what its command-line option needs.

    ``items``: the option takes a comma-separated list of this type. ``switch`` (for yes/no
    options): ``both`` gives ``--name`` and ``--no-name``, ``on`` only ``--name``, ``off``
    only ``--no-name``. ``cli=False``: settable in a config file only."""
    return dataclasses.field(default=default, metadata={
        "help": help, "choices": choices, "items": items, "switch": switch, "cli": cli})


@dataclass
class TrainConfig:
    model: str = option("msmla18", "msmla18 | msmla50 | sen2lcz | resnet20 (patch models, "
                        "trained on patches) | unet (a dense model, trained on tiles with "
                        "label masks)")
    cbam: str = option("faithful", "MSMLA attention block: the authors' code (needed for "
                       "their weights) or the paper's CBAM", choices=("faithful", "paper"))
    depth: int = option(3, "unet: levels (each halves the resolution once; tiles must be "
                        "multiples of 2^depth px)")
    width: int = option(16, "unet: channels of the first level (doubled at every level)")
    output_stride: int = option(1, "unet: input pixels per output pixel along each axis, a "
                                "power of two up to 2^depth (1: a class per 10 m pixel; 2: "
                                "per 20 m, a lighter decoder; 100 m cells need 1 or 2)")
    loss: str = option("ce", "unet: per-pixel loss, cross-entropy or focal loss (both "
                       "weighted by --class-weights)", choices=("ce", "focal"))
    focal_gamma: float = option(2.0, "unet, --loss focal: the focusing exponent gamma (0 is "
                                "cross-entropy)")
    train: str = option("", "So2Sat h5 or patch file (path or path#train)")
    val: str = option("", "validation file (path or path#validation)")
    val_fraction: float = option(
        0.0, "patch file without a split: share of patches held out for validation, as whole "
        "polygons chosen per class (the rule of lcz:extractpatches)")
    channels: list | None = option(None, "comma-separated channel names, e.g. S2:B02,S2:B03",
                                   items=str)
    classes: list | None = option(None, "comma-separated LCZ codes 1-17 (default: those "
                                  "present)", items=int)
    drop_unknown_validation: bool = option(
        False, "leave out validation samples of classes the training data lacks (validation "
        "areas from another city) instead of stopping", switch="on")
    setup: str = option("paper", "preset of optimiser and schedule: the MSMLA paper's, or what "
                        "the authors' code ran", choices=("paper", "authors-code"))
    optimizer: str = option("adam", "optimiser", choices=("adam", "nadam", "sgd"))
    lr: float = option(0.002, "learning rate")
    decay: float = option(0.004, "Keras-2 decay: lr / (1 + decay * iteration)")
    schedule: str = option("inverse-time", "learning-rate schedule: Keras-2 decay per "
                           "iteration, step every few epochs, or constant",
                           choices=("inverse-time", "step", "constant"))
    step_every: int = option(5, "step schedule: epochs between steps", cli=False)
    step_factor: float = option(0.004, "step schedule: factor at each step", cli=False)
    epochs: int = option(100, "maximum number of epochs")
    batch_size: int = option(32, "patches per batch (per process under torchrun); unet: "
                             "tiles per batch")
    patience: int = option(15, "early stopping patience (epochs)")
    bn_momentum: float = option(
        0.99, "BatchNorm momentum, Keras semantics (default 0.99, unet 0.9; lower adapts the "
        "running statistics faster on small data sets)")
    class_weights: bool = option(False, "weight the loss by inverse class frequency (unet: "
                                 "of labelled pixels)")
    soft_labels: bool = option(True, "train on label distributions where the data has them")
    augment: bool = option(True, "random flips and 90-degree rotations of training patches "
                           "(tiles with their masks)")
    seed: int = option(0, "random seed (weights, batches, augmentation, polygon split)")
    workers: int = option(0, "DataLoader worker processes")
    threads: int = option(
        0, "CPU threads for PyTorch (default 0: OMP_NUM_THREADS when set, else one per "
        "physical core, shared among torchrun's processes on a node)")
    amp: str = option("auto", "mixed precision: auto (on CUDA), on, off",
                      choices=("auto", "on", "off"))
    device: str = option("auto", "auto | cpu | cuda")
    out: str = option("runs/lcz", "run folder (checkpoints, log.csv)")
    max_steps_per_epoch: int = option(0, "stop each epoch after this many batches (0 = whole "
                                      "epochs; for smoke tests)")
    stats_samples: int = option(0, "patches used for mean/std (0 = all)")
    version: str = option("0", "model version written into the model card")
    progress: bool = option(True, "no progress bar during epochs (shown by default)",
                            switch="off")

    @classmethod
    def fields(cls) -> dict:
        return {f.name: f for f in dataclasses.fields(cls)}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


DENSE_MODEL_NAMES = ("unet",)
"""Dense models (class scores per pixel, trained on tiles); :mod:`training.models` names them
too, but this module stays free of torch."""
DENSE_DEFAULTS = {"batch_size": 4, "bn_momentum": 0.9}
"""A dense model's own defaults. A tile holds the pixels of hundreds of patches, so a small
tile file (a 3 km demo city: 16 tiles of 128 px) gives few batches: 4 tiles per batch give
enough optimiser steps, and BatchNorm statistics that settle within them (momentum 0.9)."""

SETUPS = {
    "paper": dict(optimizer="adam", lr=0.002, decay=0.004, schedule="inverse-time"),
    "authors-code": dict(optimizer="nadam", lr=0.001, schedule="step", step_every=5,
                         step_factor=0.004),
}


# -- the command line ----------------------------------------------------------------------------
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_options(parser: argparse.ArgumentParser) -> None:
    """One option per command-line field of :class:`TrainConfig`, each defaulting to None
    (not given), so that the config file and the preset fill what the user left out."""
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        if not meta["cli"]:
            continue
        if f.type == "bool":
            switch = meta["switch"]
            if switch == "off":
                parser.add_argument(_flag("no_" + f.name), dest=f.name, action="store_false",
                                    default=None, help=meta["help"])
            else:
                action = "store_true" if switch == "on" else argparse.BooleanOptionalAction
                parser.add_argument(_flag(f.name), action=action, default=None,
                                    help=meta["help"])
            continue
        kind = {"int": int, "float": float}.get(f.type)  # lists and text: read as text
        parser.add_argument(_flag(f.name), type=kind, choices=meta["choices"],
                            help=_with_default(f))


def _with_default(f: dataclasses.Field) -> str | None:
    """The option's help with its default, and the dense models' own where it differs (the
    --setup presets, which change the optimiser's, are described under --setup)."""
    if f.metadata["help"] is None:
        return None
    default = ",".join(map(str, f.default)) if isinstance(f.default, (list, tuple)) \
        else f.default
    if default in (None, "") or "default" in f.metadata["help"]:
        return f.metadata["help"]
    dense = f"; unet: {DENSE_DEFAULTS[f.name]}" if f.name in DENSE_DEFAULTS else ""
    return f"{f.metadata['help']} (default {default}{dense})"


def given_options(args: argparse.Namespace) -> dict:
    """The :class:`TrainConfig` values given on the command line (None: not given), lists
    split at commas."""
    values = {}
    for f in dataclasses.fields(TrainConfig):
        if not f.metadata["cli"]:
            continue
        value = getattr(args, f.name)
        items = f.metadata["items"]
        if items is not None and value is not None:
            value = [items(v.strip()) for v in value.split(",") if v.strip()]
        values[f.name] = value
    return values


# -- config file and merging ---------------------------------------------------------------------
def load_config_file(path: str) -> dict:
    """A JSON or TOML file of TrainConfig keys (TOML may put them under [train])."""
    if not os.path.isfile(path):
        raise TrainingError(f"config file not found: {path}")
    try:
        if path.endswith(".toml"):
            import tomllib
            with open(path, "rb") as f:
                values = tomllib.load(f)
            values = values.get("train", values)
        else:
            with open(path, encoding="utf-8") as f:
                values = json.load(f)
    except (ValueError, OSError) as exc:
        raise TrainingError(f"config file {path} cannot be parsed: {exc}") from None
    unknown = sorted(set(values) - set(TrainConfig.fields()))
    if unknown:
        raise TrainingError(f"config file {path}: unknown key(s) {', '.join(unknown)}; "
                            f"known: {', '.join(TrainConfig.fields())}")
    return {k.replace("-", "_"): v for k, v in values.items()}


def make_config(file_values: dict | None = None, overrides: dict | None = None) -> TrainConfig:
    """Defaults < setup preset < config file < command-line overrides."""
    values = dict(file_values or {})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    setup = values.get("setup", "paper")
    if setup not in SETUPS:
        raise TrainingError(f"unknown setup {setup!r}; choose {', '.join(SETUPS)}")
    merged = dict(DENSE_DEFAULTS) if values.get("model") in DENSE_MODEL_NAMES else {}
    merged.update(SETUPS[setup])
    merged.update(values)
    return TrainConfig(**merged)
