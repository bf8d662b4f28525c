"""``summary``: parameter counts of a model, counted as Keras counts them."""

from __future__ import annotations

import torch

from .models import build_model


def counts(model) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    statistics = sum(b.numel() for name, b in model.named_buffers()
                     if name.endswith(("running_mean", "running_var")))
    return {"trainable": trainable, "bn_statistics": statistics,
            "total": trainable + statistics}


def summary(name: str, channels: int, patch: int, cbam: str = "faithful") -> str:
    options = {"cbam": cbam} if name.startswith("msmla") else {}
    if name == "resnet20":
        options["patch_size"] = patch
    model = build_model(name, channels=channels, **options).eval()
    c = counts(model)
    with torch.no_grad():
        out = model(torch.zeros(1, channels, patch, patch))
    return (f"{name} ({channels} channels, {patch}x{patch} px"
            f"{', CBAM ' + cbam if name.startswith('msmla') else ''})\n"
            f"  trainable parameters      {c['trainable']:>10,}\n"
            f"  BatchNorm statistics      {c['bn_statistics']:>10,}\n"
            f"  total (Keras count)       {c['total']:>10,}\n"
            f"  output                    {tuple(out.shape)}")
