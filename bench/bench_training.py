"""Benchmark of the training package: training samples/s and inference patches/s.

For MSMLA-18 and MSMLA-50 (13 channels, 48 x 48 px, random weights and data):

- training: optimizer steps of the default setup (Adam, soft cross-entropy) on batches of 32,
  samples per second, on the CPU and, when a CUDA GPU is visible, on the GPU in fp32 and with
  AMP (float16 autocast + gradient scaling), as ``python -m training train`` runs it;
- inference: PyTorch eager vs onnxruntime on the same exported model and batches (CPU
  provider; CUDA provider too when onnxruntime has it and a GPU is visible), patches per
  second, measured in one run so the ratio compares like with like.

    python bench/bench_training.py [--models msmla18,msmla50] [--steps 6] [--batch 32]
                                   [--infer-batch 128] [--infer-batches 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from lcz_qgis_plugin.core.model.card import ModelCard  # noqa: E402
from training.export import export_onnx  # noqa: E402
from training.models import build_model  # noqa: E402
from training.train import soft_cross_entropy  # noqa: E402

CHANNELS = [f"S2:B{b}" for b in ("02", "03", "04", "05", "06", "07", "08", "8A", "11", "12")] \
    + ["OSM:building_fraction", "DSM:height", "LC:land_cover"]
PATCH = 48


def training_rate(name: str, device: str, amp: bool, steps: int, batch: int) -> float:
    torch.manual_seed(0)
    model = build_model(name, channels=len(CHANNELS)).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.002)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    x = torch.randn(batch, len(CHANNELS), PATCH, PATCH, device=device)
    target = torch.nn.functional.one_hot(torch.randint(0, 17, (batch,), device=device),
                                         17).float()

    def step():
        with torch.autocast(device.split(":")[0], dtype=torch.float16, enabled=amp):
            logits = model(x)
        loss = soft_cross_entropy(logits, target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(2):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - started)


def inference_rates(name: str, batch: int, batches: int, folder: str) -> dict:
    import onnxruntime as ort

    torch.manual_seed(0)
    model = build_model(name, channels=len(CHANNELS)).eval()
    n = len(CHANNELS)
    card = ModelCard(name=name, channels=CHANNELS, patch_size=PATCH, scale=[1.0] * n,
                     offset=[0.0] * n, mean=[0.0] * n, std=[1.0] * n, version="bench")
    path = export_onnx(model, card, os.path.join(folder, f"{name}.onnx"))
    x = np.random.default_rng(0).normal(size=(batch, n, PATCH, PATCH)).astype(np.float32)
    rates = {}

    def timed(run):
        run()
        started = time.perf_counter()
        for _ in range(batches):
            run()
        return batches * batch / (time.perf_counter() - started)

    with torch.no_grad():
        t = torch.from_numpy(x)
        rates["torch_cpu"] = timed(lambda: model(t))
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    rates["onnxruntime_cpu"] = timed(lambda: session.run(None, {"patches": x}))
    if torch.cuda.is_available():
        gpu_model = model.cuda()
        tg = torch.from_numpy(x).cuda()

        def eager_gpu():
            with torch.no_grad():
                gpu_model(tg)
            torch.cuda.synchronize()
        rates["torch_cuda"] = timed(eager_gpu)
        if "CUDAExecutionProvider" in ort.get_available_providers():
            try:
                cuda_session = ort.InferenceSession(path, providers=["CUDAExecutionProvider"])
                if cuda_session.get_providers()[0] == "CUDAExecutionProvider":
                    rates["onnxruntime_cuda"] = timed(
                        lambda: cuda_session.run(None, {"patches": x}))
            except Exception as exc:  # noqa: BLE001 - report, do not fail the benchmark
                print(f"  onnxruntime CUDA unavailable: {exc}".splitlines()[0])
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="msmla18,msmla50")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--infer-batch", type=int, default=128)
    parser.add_argument("--infer-batches", type=int, default=4)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(),
               "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
               "models": {}}
    print(f"training package benchmark: torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, GPU: {results['cuda'] or 'none'}")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            figures = {"train_cpu": training_rate(name, "cpu", False, args.steps, args.batch)}
            if torch.cuda.is_available():
                steps = max(args.steps, 20)
                figures["train_cuda_fp32"] = training_rate(name, "cuda", False, steps,
                                                           args.batch)
                figures["train_cuda_amp"] = training_rate(name, "cuda", True, steps,
                                                          args.batch)
            figures.update(inference_rates(name, args.infer_batch, args.infer_batches, folder))
            results["models"][name] = figures
            print(f"{name} (13 x {PATCH} x {PATCH}):")
            print(f"  training, batch {args.batch}:")
            for key in ("train_cpu", "train_cuda_fp32", "train_cuda_amp"):
                if key in figures:
                    print(f"    {key[6:]:<10} {figures[key]:9.1f} samples/s")
            print(f"  inference, batch {args.infer_batch}:")
            for key in ("torch_cpu", "onnxruntime_cpu", "torch_cuda", "onnxruntime_cuda"):
                if key in figures:
                    print(f"    {key:<17} {figures[key]:9.1f} patches/s")
            print(f"    onnxruntime / eager on CPU: "
                  f"{figures['onnxruntime_cpu'] / figures['torch_cpu']:.2f}x")
            if "train_cuda_amp" in figures:
                print(f"    AMP / fp32 training on GPU: "
                      f"{figures['train_cuda_amp'] / figures['train_cuda_fp32']:.2f}x")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
