"""``python -m training train``: fit a model on So2Sat LCZ42 or on the project's patch files.

Defaults are the MSMLA paper's documented setup: Adam, learning rate 0.002 with decay 0.004,
He-normal initialisation, batch 32, at most 100 epochs, early stopping after 15 epochs without
a lower validation loss (the best weights are kept).

"decay 0.004" is read with the semantics it has in Keras 2, which the authors used: the
optimiser's ``decay`` argument lowers the learning rate after every *iteration* (batch) as
``lr_t = lr / (1 + decay * t)``. ``--setup authors-code`` instead reproduces what the authors'
code ran: Nadam, lr 0.001 * 0.004 ** floor(epoch / 5) (a step schedule), early stopping 15.
Their two bugs are not reproduced: augmentation is applied only to training batches, and
class weights (``--class-weights``) are real inverse class frequencies.

Runs on one CPU/GPU, or on several GPUs / nodes under ``torchrun`` (DistributedDataParallel,
NCCL on CUDA, gloo on CPU). Rank 0 writes the checkpoints and the logs.

CPU threads (``--threads``, :func:`training_threads`): by default one per physical core, not
PyTorch's one per logical core. On a shared 2-core machine the logical-core default made an
epoch take 393 s instead of 57-140 s on one thread: hyper-threads and other users' processes
compete for the same cores, and every OpenMP barrier waits for the slowest thread. Physical
cores remove only the hyper-thread part of that; when the machine is already busy the run
prints a note suggesting ``--threads 1`` (:func:`busy_machine_note`).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from lcz_qgis_plugin.core.commit import Commit
from lcz_qgis_plugin.core.inference.engine import physical_cores

from . import datasets as ds
from .models import build_model

CHECKPOINT_FORMAT = "lcz-training-checkpoint"
CHECKPOINT_VERSION = 1


class TrainingError(RuntimeError):
    """A training run that cannot go on; the message says why and what to do."""


@dataclass
class TrainConfig:
    model: str = "msmla18"
    cbam: str = "faithful"
    train: str = ""
    val: str = ""
    val_fraction: float = 0.0
    channels: list | None = None
    classes: list | None = None
    drop_unknown_validation: bool = False
    """Validation samples of classes absent from the training data are dropped (with a
    message) instead of refused; for validation areas from another city."""
    setup: str = "paper"
    optimizer: str = "adam"
    lr: float = 0.002
    decay: float = 0.004
    schedule: str = "inverse-time"      # inverse-time (Keras 2 decay) | step | constant
    step_every: int = 5
    step_factor: float = 0.004
    epochs: int = 100
    batch_size: int = 32
    patience: int = 15
    bn_momentum: float = 0.99           # Keras semantics: running = m * running + (1 - m) * batch
    class_weights: bool = False
    soft_labels: bool = True
    augment: bool = True
    seed: int = 0
    workers: int = 0
    threads: int = 0                    # CPU threads; 0 = physical cores (training_threads)
    amp: str = "auto"                   # auto (on CUDA) | on | off
    device: str = "auto"
    out: str = "runs/lcz"
    max_steps_per_epoch: int = 0        # 0 = whole epochs; >0 for smoke tests
    stats_samples: int = 0              # 0 = all training patches
    version: str = "0"
    progress: bool = True

    @classmethod
    def fields(cls) -> dict:
        return {f.name: f for f in dataclasses.fields(cls)}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SETUPS = {
    "paper": dict(optimizer="adam", lr=0.002, decay=0.004, schedule="inverse-time"),
    "authors-code": dict(optimizer="nadam", lr=0.001, schedule="step", step_every=5,
                         step_factor=0.004),
}


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
    merged = dict(SETUPS[setup])
    merged.update(values)
    return TrainConfig(**merged)


# -- distributed helpers -------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_distributed(device_name: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist
    backend = "nccl" if device_name.startswith("cuda") else "gloo"
    dist.init_process_group(backend)
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_sum(values: list[float], dist_info: Dist, device) -> list[float]:
    if not dist_info.active:
        return values
    import torch.distributed as dist
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def training_threads(requested: int) -> tuple[int, str]:
    """(CPU threads for torch, where the number comes from) for ``--threads requested``.

    0 means automatic: ``OMP_NUM_THREADS`` when the environment sets it (torchrun sets 1 for
    several processes per node), otherwise the physical cores this process may use, shared
    among the ``LOCAL_WORLD_SIZE`` processes torchrun starts on this node.
    """
    if requested < 0:
        raise TrainingError(f"--threads {requested}: give a number of CPU threads, or 0 for "
                            "one per physical core.")
    if requested:
        return requested, "--threads"
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp), "OMP_NUM_THREADS"
    cores = physical_cores()
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    if local == 1:
        return cores, "physical cores"
    return max(1, cores // local), f"{cores} physical cores / {local} processes on this node"


def busy_machine_note(threads: int) -> str | None:
    """A hint when the cores are already busy before the run starts (1-minute load average
    at least the number of threads): threads that wait for each other at every OpenMP
    barrier then lose far more than they gain."""
    if threads <= 1:
        return None
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not available on this system
        return None
    if load < threads:
        return None
    return (f"note: load average {load:.1f} with {threads} threads: other processes keep the "
            f"cores busy, where one thread is often several times faster (a shared 2-core "
            f"machine: 0.9-1.2 s per batch on 1 thread, 6-7 s on 2); try --threads 1.")


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    try:  # inter-op pool (used by few ops in eager training): no larger than the intra-op one
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # settable once per process, before any parallel work; keep it then
        pass


def _one_thread_per_worker(worker_id: int) -> None:
    """DataLoader worker start: one torch thread, so ``--workers N`` never starts N pools the
    size of the machine (PyTorch does this itself in current versions; kept explicit)."""
    torch.set_num_threads(1)


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for, but this PyTorch sees no CUDA GPU; "
                            "use --device cpu or install a CUDA build of PyTorch.")
    return name


# -- loss and learning rate ----------------------------------------------------------------------
def soft_cross_entropy(logits, target, weights=None):
    """Cross-entropy to a label distribution (one-hot for hard labels).

    With class weights w, sample i weighs s_i = sum_c w_c q_ic and the loss is
    sum_i s_i l_i / sum_i s_i: for one-hot targets exactly PyTorch's weighted cross-entropy.
    """
    per_sample = -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    if weights is None:
        return per_sample.mean()
    s = target @ weights
    return (s * per_sample).sum() / s.sum().clamp_min(1e-12)


def learning_rate(config: TrainConfig, step: int, epoch: int) -> float:
    if config.schedule == "inverse-time":
        return config.lr / (1.0 + config.decay * step)
    if config.schedule == "step":
        return config.lr * config.step_factor ** (epoch // config.step_every)
    if config.schedule == "constant":
        return config.lr
    raise TrainingError(f"unknown schedule {config.schedule!r}; use inverse-time, step or "
                        "constant.")


def make_optimizer(config: TrainConfig, params):
    name = config.optimizer.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=config.lr)
    if name == "nadam":  # momentum_decay 0.004 = Keras Nadam's schedule_decay
        return torch.optim.NAdam(params, lr=config.lr, momentum_decay=0.004)
    if name == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9)
    raise TrainingError(f"unknown optimizer {config.optimizer!r}; use adam, nadam or sgd.")


# -- checkpoints ---------------------------------------------------------------------------------
def save_checkpoint(path: str, payload: dict) -> None:
    """Written under a temporary name and moved into place (:mod:`commit`): a crash or a
    full disk never leaves half a checkpoint, and the previous one stays until then."""
    with Commit() as files:
        files.save_with(path, lambda temp: torch.save(payload, temp), "checkpoint",
                        errors=(RuntimeError,))  # torch's zip writer reports failed writes so


def load_checkpoint(path: str) -> dict:
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


def model_from_checkpoint(payload: dict):
    model = build_model(payload["model"], channels=len(payload["channels"]),
                        classes=len(payload["class_codes"]), **payload["model_options"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()


# -- the run -------------------------------------------------------------------------------------
def _model_options(config: TrainConfig, patch_size: int) -> dict:
    if config.model.startswith("msmla"):
        return {"cbam": config.cbam}
    if config.model == "resnet20":
        return {"patch_size": patch_size}
    return {}


def _open_data(config: TrainConfig):
    if not config.train:
        raise TrainingError("no training data: give --train FILE (So2Sat h5 or patch file).")
    try:
        source, rows = ds.open_source(config.train, config.channels)
        if config.val:
            val_source, val_rows = ds.open_source(config.val, config.channels)
        elif config.val_fraction > 0:
            if not isinstance(source, ds.PatchFile):
                raise ds.DataError("--val-fraction splits a patch file by polygon; for So2Sat "
                                   "give the validation file with --val.")
            ids = source.polygon_ids if rows is None else source.polygon_ids[rows]
            base = np.arange(len(source)) if rows is None else rows
            tr, va = ds.polygon_split(ids, config.val_fraction, config.seed)
            rows, val_source, val_rows = base[tr], source, base[va]
        else:
            raise ds.DataError("no validation data: give --val FILE (or FILE#validation), or "
                               "--val-fraction for a patch file.")
        if val_source.channels != source.channels or \
                val_source.patch_size != source.patch_size:
            raise ds.DataError("training and validation data differ in channels or patch size.")
        train_codes = source.codes if rows is None else source.codes[rows]
        classes = ds.choose_classes(train_codes, config.classes, config.train)
        train_split = ds.make_split(source, rows, classes, "training")
        val_split = ds.make_split(val_source, val_rows, classes, "validation",
                                  drop_unknown=config.drop_unknown_validation)
        if len(val_split.rows) == 0:
            raise ds.DataError("the validation split is empty.")
        weights = ds.class_weights(train_split.labels, len(classes)) \
            if config.class_weights else None
    except ds.DataError as exc:
        raise TrainingError(str(exc)) from None
    return source, val_source, train_split, val_split, classes, weights


def train(config: TrainConfig, resume: str | None = None) -> dict:
    """Run training; returns a summary (paths of best.pt / last.pt, epochs, best val loss)."""
    device_name = pick_device(config.device)
    threads, source = training_threads(config.threads)
    dist_info = init_distributed(device_name)
    before = torch.get_num_threads()
    _set_threads(threads)
    if dist_info.main:
        print(f"threads: {threads} ({source})", flush=True)
        note = busy_machine_note(threads) if source != "--threads" else None
        if note:
            print(note, flush=True)
    try:
        return _train(config, resume, device_name, dist_info)
    finally:
        torch.set_num_threads(before)  # a caller in the same process keeps its setting
        if dist_info.active:
            import torch.distributed as dist
            dist.destroy_process_group()


def _train(config, resume, device_name, dist_info: Dist) -> dict:
    if device_name == "cuda" and dist_info.active:
        device_name = f"cuda:{dist_info.local_rank}"
        torch.cuda.set_device(dist_info.local_rank)
    device = torch.device(device_name)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    source, val_source, train_split, val_split, classes, weights = _open_data(config)
    payload = load_checkpoint(resume) if resume else None
    if payload is not None:
        mean, std = np.asarray(payload["mean"]), np.asarray(payload["std"])
        if payload["class_codes"] != classes or payload["channels"] != source.channels:
            raise TrainingError(f"{resume} was trained on other classes or channels than this "
                                "data; resume with the data of its run.")
    else:
        mean, std = ds.channel_statistics(source, train_split.rows,
                                          max_samples=config.stats_samples or None,
                                          seed=config.seed)
    options = _model_options(config, source.patch_size)
    try:
        model = build_model(config.model, channels=len(source.channels), classes=len(classes),
                            **options)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = 1.0 - config.bn_momentum  # PyTorch's momentum is Keras' 1 - m
    optimizer = make_optimizer(config, model.parameters())
    start_epoch, step, best_loss, bad_epochs, history = 0, 0, math.inf, 0, []
    if payload is not None:
        model.load_state_dict(payload["state_dict"])
        optimizer.load_state_dict(payload["optimizer"])
        start_epoch, step = payload["epoch"] + 1, payload["step"]
        best_loss, bad_epochs = payload["best_val_loss"], payload["bad_epochs"]
        history = payload.get("history", [])
    model.to(device)
    use_amp = device.type == "cuda" and config.amp != "off"
    if config.amp == "on" and device.type != "cuda":
        raise TrainingError("--amp on needs a CUDA device (mixed precision runs on GPUs).")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    if payload is not None and payload.get("scaler"):
        scaler.load_state_dict(payload["scaler"])
    net = model
    if dist_info.active:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    weights_t = torch.as_tensor(weights, device=device) if weights is not None else None

    train_reader = ds.BatchReader(source, train_split, mean, std, classes,
                                  soft_labels=config.soft_labels, augment=config.augment)
    val_reader = ds.BatchReader(val_source, val_split, mean, std, classes,
                                soft_labels=config.soft_labels, augment=False)
    train_batches = ds.ShardedBatches(len(train_split.rows), config.batch_size, shuffle=True,
                                      seed=config.seed, rank=dist_info.rank,
                                      world=dist_info.world)
    val_batches = ds.ShardedBatches(len(val_split.rows), max(config.batch_size, 256),
                                    shuffle=False, rank=dist_info.rank, world=dist_info.world,
                                    even=False)
    loader_args = dict(batch_size=None, num_workers=config.workers,
                       pin_memory=device.type == "cuda",
                       persistent_workers=config.workers > 0,
                       worker_init_fn=_one_thread_per_worker if config.workers > 0 else None)
    train_loader = torch.utils.data.DataLoader(train_reader, sampler=train_batches, **loader_args)
    val_loader = torch.utils.data.DataLoader(val_reader, sampler=val_batches, **loader_args)

    out = config.out
    if dist_info.main:
        with Commit(inputs=[config.train, config.val]) as files:
            files.write_text(os.path.join(out, "config.json"),
                             json.dumps(config.to_dict(), indent=2), "run configuration")
    log_path = os.path.join(out, "log.csv")
    tb = _tensorboard(out) if dist_info.main else None
    print(f"rank {dist_info.rank}/{dist_info.world}: {config.model} on {device}, "
          f"{len(train_split.rows)} training / {len(val_split.rows)} validation patches, "
          f"{len(train_batches)} batches per epoch on this rank", flush=True)

    def checkpoint(epoch, val_metrics):
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "model": config.model, "model_options": options,
            "channels": list(source.channels), "patch_size": int(source.patch_size),
            "class_codes": [int(c) for c in classes],
            "mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "card_scale": list(source.card_scale), "card_offset": list(source.card_offset),
            "pixel_size": float(source.pixel_size), "cell_size": float(source.cell_size),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "epoch": epoch, "step": step, "best_val_loss": best_loss,
            "bad_epochs": bad_epochs, "config": config.to_dict(), "history": history,
            "provenance": {"train": config.train, "val": config.val or
                           f"{config.train} ({config.val_fraction:g} of polygons)",
                           "date": _dt.datetime.now(_dt.UTC).isoformat(
                               timespec="seconds"),
                           "epoch": epoch, "validation": val_metrics,
                           "setup": config.setup, "optimizer": config.optimizer,
                           "threads": torch.get_num_threads()},
        }

    stopped_early = False
    epoch = start_epoch - 1
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        train_batches.set_epoch(epoch)
        net.train()
        total, seen, correct = 0.0, 0, 0
        progress = _progress(train_loader, len(train_batches), f"epoch {epoch + 1}",
                             config.progress and dist_info.main)
        for i, (x, labels, target) in enumerate(progress):
            if config.max_steps_per_epoch and i >= config.max_steps_per_epoch:
                break
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step, epoch)
            x, labels, target = (t.to(device, non_blocking=True) for t in (x, labels, target))
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = net(x)
            loss = soft_cross_entropy(logits, target, weights_t)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            total += float(loss.detach()) * len(x)
            seen += len(x)
            correct += int((logits.detach().argmax(1) == labels).sum())
        total, seen, correct = all_reduce_sum([total, seen, correct], dist_info, device)
        val = evaluate_loss(net, val_loader, device, use_amp, dist_info)
        improved = val["loss"] < best_loss
        if improved:
            best_loss, bad_epochs = val["loss"], 0
        else:
            bad_epochs += 1
        row = {"epoch": epoch + 1, "step": step,
               "lr": learning_rate(config, step, epoch),
               "train_loss": total / max(seen, 1), "train_oa": correct / max(seen, 1),
               "val_loss": val["loss"], "val_oa": val["oa"],
               "seconds": round(time.perf_counter() - started, 3)}
        history.append(row)
        if dist_info.main:
            _append_csv(log_path, row)
            if tb is not None:
                for key, value in row.items():
                    if key not in ("epoch", "step"):
                        tb.add_scalar(key, value, epoch + 1)
            state = checkpoint(epoch, {"loss": val["loss"], "oa": val["oa"]})
            save_checkpoint(os.path.join(out, "last.pt"), state)
            if improved:
                save_checkpoint(os.path.join(out, "best.pt"), state)
            print(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f} OA "
                  f"{row['train_oa']:.3f} | val loss {val['loss']:.4f} OA {val['oa']:.3f}"
                  f"{' (best)' if improved else ''}", flush=True)
        if bad_epochs >= config.patience:
            stopped_early = True
            if dist_info.main:
                print(f"early stop: no lower validation loss for {config.patience} epochs",
                      flush=True)
            break
    if tb is not None:
        tb.close()
    return {"best": os.path.join(out, "best.pt"), "last": os.path.join(out, "last.pt"),
            "epochs": epoch + 1, "best_val_loss": best_loss, "stopped_early": stopped_early,
            "history": history, "rank": dist_info.rank, "world": dist_info.world}


def evaluate_loss(net, loader, device, use_amp: bool, dist_info: Dist) -> dict:
    """Mean (unweighted) validation loss and OA, summed over all ranks."""
    net.eval()
    total, seen, correct = 0.0, 0, 0
    with torch.no_grad():
        for x, labels, target in loader:
            x, labels, target = x.to(device), labels.to(device), target.to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = net(x)
            total += float(soft_cross_entropy(logits, target)) * len(x)
            seen += len(x)
            correct += int((logits.argmax(1) == labels).sum())
    total, seen, correct = all_reduce_sum([total, seen, correct], dist_info, device)
    return {"loss": total / max(seen, 1), "oa": correct / max(seen, 1)}


def _progress(iterable, total, desc, enabled):
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, file=sys.stderr,
                dynamic_ncols=True)


def _tensorboard(out):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional; the CSV log always exists
        return None
    return SummaryWriter(os.path.join(out, "tensorboard"))


def _append_csv(path: str, row: dict) -> None:
    """The log with one more row, replaced as a whole (it is small): a crash or a full disk
    leaves the previous log, never half a line."""
    text = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(row))
    if not text:
        writer.writeheader()
    writer.writerow(row)
    with Commit() as files:
        files.write_text(path, text + buffer.getvalue(), "training log")
