"""Training checkpoints: what ``best.pt`` / ``last.pt`` hold, and how a run resumes from one.

A checkpoint is a ``torch.save`` dict (read back with ``weights_only=True``: plain tensors,
lists and numbers only) with

* what the model card needs (``training.export`` builds the card from it): ``model``,
  ``model_options``, ``channels``, ``patch_size``, ``class_codes``, ``mean``, ``std``,
  ``card_scale``, ``card_offset``, ``pixel_size``, ``cell_size``, ``provenance``;
* the weights, ``state_dict`` (without DistributedDataParallel's ``module.`` prefix);
* what resuming needs: ``optimizer``, ``scaler``, ``epoch`` (the last finished, from 0),
  ``step``, ``best_val_loss``, ``bad_epochs``, ``history`` (:class:`RunState`), ``config``.

Files are written through :mod:`lcz_qgis_plugin.core.commit`: a crash or a full disk never
leaves half a checkpoint.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from dataclasses import dataclass, field

import torch

from lcz_qgis_plugin.core.commit import Commit

from .config import TrainConfig, TrainingError
from .models import build_model

CHECKPOINT_FORMAT = "lcz-training-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class RunState:
    """Where a run stands after an epoch; a checkpoint carries it so that a run resumes."""

    start_epoch: int = 0        # the next epoch to run, from 0
    step: int = 0               # optimiser steps so far (the inverse-time schedule counts them)
    best_val_loss: float = math.inf
    bad_epochs: int = 0         # epochs since the validation loss last fell (early stopping)
    history: list = field(default_factory=list)  # one log row per epoch

    @classmethod
    def from_checkpoint(cls, payload: dict) -> RunState:
        return cls(start_epoch=payload["epoch"] + 1, step=payload["step"],
                   best_val_loss=payload["best_val_loss"], bad_epochs=payload["bad_epochs"],
                   history=payload.get("history", []))

    def record(self, val_loss: float) -> bool:
        """Note an epoch's validation loss; True when it is the lowest so far."""
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.bad_epochs = val_loss, 0
            return True
        self.bad_epochs += 1
        return False


def checkpoint_payload(config: TrainConfig, description: dict, model, optimizer, scaler,
                       state: RunState, epoch: int, validation: dict) -> dict:
    """The checkpoint after ``epoch``. ``description``: the model's name and options and
    the data's channels, classes and statistics (:func:`describe_model`)."""
    return {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **description,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
        "epoch": epoch, "step": state.step, "best_val_loss": state.best_val_loss,
        "bad_epochs": state.bad_epochs, "config": config.to_dict(), "history": state.history,
        "provenance": {"train": config.train, "val": config.val or
                       f"{config.train} ({config.val_fraction:g} of polygons)",
                       "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                       "epoch": epoch, "validation": validation,
                       "setup": config.setup, "optimizer": config.optimizer,
                       "threads": torch.get_num_threads()},
    }


def describe_model(config: TrainConfig, options: dict, source, classes: list[int], mean,
                   std) -> dict:
    """The checkpoint entries that say what the model is and reads (for its model card)."""
    return {
        "model": config.model, "model_options": options,
        "channels": list(source.channels), "patch_size": int(source.patch_size),
        "class_codes": [int(c) for c in classes],
        "mean": [float(v) for v in mean], "std": [float(v) for v in std],
        "card_scale": list(source.card_scale), "card_offset": list(source.card_offset),
        "pixel_size": float(source.pixel_size), "cell_size": float(source.cell_size),
    }


def save_checkpoint(path: str, payload: dict) -> None:
    """Written under a temporary name and moved into place (:mod:`commit`): a crash or a
    full disk never leaves half a checkpoint, and the previous one stays until then."""
    with Commit() as files:
        files.save_with(path, lambda temp: torch.save(payload, temp), "checkpoint",
                        errors=(RuntimeError,))  # torch's zip writer reports failed writes so


def load_checkpoint(path: str) -> dict:
    """A checkpoint of this package; a missing, damaged or foreign file is refused by name."""
    if not os.path.isfile(path):
        raise TrainingError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a damaged file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingError(f"checkpoint {path} cannot be read ({first[:120]}): the file is "
                            "damaged or incomplete. Resume from another checkpoint (best.pt / "
                            "last.pt) or start a new run.") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path} is not a checkpoint of this training package.")
    if payload.get("version", 0) > CHECKPOINT_VERSION:
        raise TrainingError(f"{path} was written by a newer training package; update it.")
    return payload


def check_resumable(payload: dict, path: str, classes: list[int], channels: list[str]) -> None:
    """Refuse to resume a run on data with other classes or channels than its own."""
    if payload["class_codes"] != classes or payload["channels"] != channels:
        raise TrainingError(f"{path} was trained on other classes or channels than this "
                            "data; resume with the data of its run.")


def resume_training(payload: dict, model, optimizer, scaler) -> RunState:
    """Load the weights, optimiser and gradient-scaler state of ``payload``; where the run
    stands."""
    model.load_state_dict(payload["state_dict"])
    optimizer.load_state_dict(payload["optimizer"])
    if payload.get("scaler"):
        scaler.load_state_dict(payload["scaler"])
    return RunState.from_checkpoint(payload)


def model_from_checkpoint(payload: dict):
    """The trained model of a checkpoint, in evaluation mode."""
    model = build_model(payload["model"], channels=len(payload["channels"]),
                        classes=len(payload["class_codes"]), **payload["model_options"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()
