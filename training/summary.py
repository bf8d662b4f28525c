"""``summary``: parameter counts of a model, counted as Keras counts them."""

from __future__ import annotations

import torch

from .config import TrainingError
from .models import build_model, model_kind


def counts(model) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    statistics = sum(b.numel() for name, b in model.named_buffers()
                     if name.endswith(("running_mean", "running_var")))
    return {"trainable": trainable, "bn_statistics": statistics,
            "total": trainable + statistics}


def summary(name: str, channels: int, patch: int, cbam: str = "faithful", depth: int = 3,
            width: int = 16, output_stride: int = 1) -> str:
    """Parameter counts and output shape of ``name`` on a ``patch`` px input (a tile for a
    dense model, whose output stride, receptive field and tile multiple follow)."""
    options = {"cbam": cbam} if name.startswith("msmla") else {}
    if name == "resnet20":
        options["patch_size"] = patch
    dense = model_kind(name) == "dense"
    if dense:
        options.update(depth=depth, width=width, output_stride=output_stride)
    try:
        model = build_model(name, channels=channels, **options).eval()
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    if dense and patch % model.tile_multiple:
        raise TrainingError(f"--patch {patch}: a U-Net of depth {depth} takes tiles of a "
                            f"multiple of {model.tile_multiple} px.")
    c = counts(model)
    with torch.no_grad():
        out = model(torch.zeros(1, channels, patch, patch))
    described = (f", CBAM {cbam}" if name.startswith("msmla") else
                 f", depth {depth}, width {width}"
                 + (f", output stride {output_stride}" if output_stride != 1 else "")
                 if dense else "")
    text = (f"{name} ({channels} channels, {patch}x{patch} px{described})\n"
            f"  trainable parameters      {c['trainable']:>10,}\n"
            f"  BatchNorm statistics      {c['bn_statistics']:>10,}\n"
            f"  total (Keras count)       {c['total']:>10,}\n"
            f"  output                    {tuple(out.shape)}")
    if dense:
        text += (f"\n  output stride             {model.output_stride:>10} px"
                 f"\n  receptive field           {model.receptive_field:>10} px"
                 f"\n  tile multiple             {model.tile_multiple:>10} px")
    return text
