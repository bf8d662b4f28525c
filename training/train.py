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

Dense models (``--model unet``) train on tile files: the same run, with a per-pixel loss over
the labelled pixels of each tile's mask (:func:`pixel_loss`: cross-entropy or focal loss,
weighted by inverse labelled-pixel frequency with ``--class-weights``), statistics, loss and
OA per labelled pixel; the model kind decides (:func:`training.models.model_kind`), and the
patch path is unchanged.

Where things are: the options in :mod:`.config`, several processes in :mod:`.distributed`,
checkpoints and resuming in :mod:`.checkpoints`, the data in :mod:`.datasets`; here the run
itself, :class:`Trainer`, in the steps of torchgeo's trainer hooks.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from lcz_qgis_plugin.core.commit import Commit
from lcz_qgis_plugin.core.feedback import ConsoleFeedback, Feedback, format_duration
from lcz_qgis_plugin.core.inference.engine import physical_cores
from lcz_qgis_plugin.core.interrupt import stop_if_requested

from . import datasets as ds
from .checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    RunState,
    check_resumable,
    checkpoint_payload,
    describe_model,
    load_checkpoint,
    model_from_checkpoint,
    resume_training,
    save_checkpoint,
)
from .config import SETUPS, TrainConfig, TrainingError, load_config_file, make_config
from .distributed import (
    Dist,
    all_reduce_sum,
    init_distributed,
    leave_distributed,
    process_device,
    wrap_model,
)
from .models import MODELS, build_model, model_kind
from .models.unet import MAX_DEPTH
from .progress import progress_bar

__all__ = [  # the run, and what callers have imported from here before the split
    "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "SETUPS", "Dist", "TrainConfig", "Trainer",
    "TrainingError", "all_reduce_sum", "busy_machine_note", "init_distributed",
    "learning_rate", "load_checkpoint", "load_config_file", "make_config", "make_optimizer",
    "model_from_checkpoint", "pick_device", "pixel_loss", "save_checkpoint",
    "soft_cross_entropy", "train", "training_threads",
]


# -- threads and device --------------------------------------------------------------------------
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


def pixel_loss(logits, target, weights=None, kind: str = "ce", gamma: float = 2.0):
    """Mean loss over the labelled pixels of ``logits`` (N, K, H, W) against class indices
    ``target`` (N, H, W), :data:`~training.datasets.IGNORE` where a pixel has no label (it
    adds nothing, not even a gradient; a batch without a labelled pixel has loss 0).

    ``kind`` "ce": cross-entropy; "focal": focal loss (Lin et al. 2017),
    -(1 - p_t)^gamma log p_t, which at gamma 0 is the cross-entropy. With class weights w a
    pixel of class c weighs w_c and the loss is sum_i w_i l_i / sum_i w_i: for "ce" exactly
    PyTorch's weighted cross-entropy with ``ignore_index``."""
    log_p = F.log_softmax(logits.float(), dim=1)
    labelled = target != ds.IGNORE
    index = torch.where(labelled, target, torch.zeros_like(target))
    log_pt = log_p.gather(1, index[:, None]).squeeze(1)
    per_pixel = -log_pt
    if kind == "focal":
        per_pixel = per_pixel * (1.0 - log_pt.exp()).clamp_min(1e-6).pow(gamma)
    elif kind != "ce":
        raise TrainingError(f"unknown loss {kind!r}; use ce or focal.")
    s = labelled.float() if weights is None else weights[index] * labelled
    return (s * per_pixel).sum() / s.sum().clamp_min(1e-12)


def on_label_grid(logits, labels):
    """A dense model's logits on its labels' pixel grid: a model of output stride s > 1 scores
    each s x s block of pixels once, so its logits are repeated over the block (nearest
    neighbour), and every labelled pixel counts in the loss and the OA, as at stride 1 (the
    mean loss over a block's pixels is the loss of the block's label histogram)."""
    if logits.shape[-2:] != labels.shape[-2:]:
        return F.interpolate(logits, size=labels.shape[-2:], mode="nearest")
    return logits


def tally(loss, logits, labels, dense: bool) -> tuple[float, int, int]:
    """(loss x samples, samples, correct) of one batch; a dense model's samples are its
    labelled pixels."""
    if not dense:
        return (float(loss.detach()) * len(labels), len(labels),
                int((logits.detach().argmax(1) == labels).sum()))
    labelled = labels != ds.IGNORE
    n = int(labelled.sum())
    correct = int(((logits.detach().argmax(1) == labels) & labelled).sum())
    return float(loss.detach()) * n, n, correct


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


# -- the data ------------------------------------------------------------------------------------
@dataclass
class RunData:
    """What a run trains and validates on."""

    source: ds.PatchSource
    val_source: ds.PatchSource
    train_split: ds.Split
    val_split: ds.Split
    classes: list[int]               # LCZ codes the model predicts, in output order
    weights: np.ndarray | None       # loss weight per class (--class-weights), else None


def open_data(config: TrainConfig, feedback: Feedback | None = None) -> RunData:
    """The training and validation data of ``config``; problems end in a TrainingError that
    says what to give instead."""
    if not config.train:
        raise TrainingError("no training data: give --train FILE (So2Sat h5 or patch file).")
    check_model_options(config)
    try:
        source, rows, val_source, val_rows = _sources(config, feedback or Feedback())
        if model_kind(config.model) == "dense":
            return _dense_data(config, source, rows, val_source, val_rows)
        train_codes = source.codes if rows is None else source.codes[rows]
        classes = ds.choose_classes(train_codes, config.classes, config.train)
        train_split = ds.make_split(source, rows, classes, "training")
        val_split = ds.make_split(val_source, val_rows, classes, "validation",
                                  drop_unknown=config.drop_unknown_validation)
        if len(val_split.rows) == 0:
            raise ds.DataError(
                "the validation split is empty: the patch file holds no validation patches of "
                "the trained classes. Give another file with --val (e.g. patches of another "
                "city), or extract the patch file again with a validation share "
                "(lcz:extractpatches VALIDATION_FRACTION; it needs two polygons or more per "
                "class).")
        weights = ds.class_weights(train_split.labels, len(classes)) \
            if config.class_weights else None
    except ds.DataError as exc:
        raise TrainingError(str(exc)) from None
    return RunData(source, val_source, train_split, val_split, classes, weights)


def _sources(config: TrainConfig, feedback: Feedback):
    """(training source, its rows, validation source, its rows); rows None: all. Without
    ``--val``, ``--val-fraction`` holds out whole polygons of the training patch file."""
    source, rows = _open_for_model(config, config.train)
    if config.val:
        val_source, val_rows = _open_for_model(config, config.val)
    elif config.val_fraction > 0:
        if not isinstance(source, ds.PatchFile):
            raise ds.DataError("--val-fraction splits a patch file by polygon; for So2Sat "
                               "give the validation file with --val.")
        if source.sample_kind == "tiles":
            raise ds.DataError(
                f"--val-fraction holds out whole polygons of a patch file, but "
                f"{config.train} holds tiles, which overlap and cover several polygons each. "
                f"Extract the tiles with a validation share (lcz:extractpatches) and give "
                f"FILE#train and --val FILE#validation, or give --val FILE.")
        base = np.arange(len(source)) if rows is None else rows
        tr, va = ds.polygon_split(source.polygon_ids[base], config.val_fraction, config.seed,
                                  source.codes[base], feedback)
        rows, val_source, val_rows = base[tr], source, base[va]
    else:
        raise ds.DataError("no validation data: give --val FILE (or FILE#validation), or "
                           "--val-fraction for a patch file.")
    if val_source.channels != source.channels or \
            val_source.patch_size != source.patch_size:
        raise ds.DataError("training and validation data differ in channels or patch size.")
    return source, rows, val_source, val_rows


def _open_for_model(config: TrainConfig, spec: str):
    """``ds.open_source``, refusing data of the other kind (tiles for a patch model,
    patches for a dense one) by name."""
    source, rows = ds.open_source(spec, config.channels)
    problem = ds.sample_kind_problem(config.model, model_kind(config.model) == "dense",
                                     source, spec)
    if problem:
        raise ds.DataError(problem)
    return source, rows


def check_model_options(config: TrainConfig) -> None:
    """Refuse an unknown model and impossible U-Net or loss options before any data is read."""
    if config.model not in MODELS:
        raise TrainingError(f"unknown model {config.model!r}; choose one of "
                            f"{', '.join(MODELS)}")
    if model_kind(config.model) != "dense":
        return
    if not 1 <= config.depth <= MAX_DEPTH:
        raise TrainingError(f"--depth {config.depth}: a U-Net has 1 to {MAX_DEPTH} levels.")
    if config.width < 1:
        raise TrainingError(f"--width {config.width}: give at least 1 channel.")
    strides = [2 ** level for level in range(config.depth + 1)]
    if config.output_stride not in strides:
        raise TrainingError(f"--output-stride {config.output_stride}: a U-Net of depth "
                            f"{config.depth} gives one output pixel per "
                            f"{', '.join(map(str, strides))} input pixels; choose one of them.")
    if config.loss not in ("ce", "focal"):
        raise TrainingError(f"unknown loss {config.loss!r}; use ce or focal.")
    if not config.focal_gamma >= 0:
        raise TrainingError(f"--focal-gamma {config.focal_gamma}: give 0 or more (0 is "
                            "cross-entropy, 2 the usual choice).")


def _dense_data(config: TrainConfig, source, rows, val_source, val_rows) -> RunData:
    """A dense model's data: tiles whose size suits the U-Net, the classes present in the
    training masks (or --classes), and weights by inverse labelled-pixel frequency."""
    multiple = 2 ** config.depth
    if source.patch_size % multiple:
        raise ds.DataError(f"{config.train} holds tiles of {source.patch_size} px, not a "
                           f"multiple of {multiple} (2^depth for --depth {config.depth}): "
                           f"extract tiles of a multiple of {multiple} px or lower --depth.")
    rows = np.arange(len(source)) if rows is None else np.sort(rows)
    val_rows = np.arange(len(val_source)) if val_rows is None else np.sort(val_rows)
    counts = ds.pixel_counts(source, rows)
    present = np.flatnonzero(counts[1:]) + 1
    classes = ds.choose_classes(present, config.classes, config.train)
    ds.check_mask_classes(counts, classes, "training", config.train)
    val_counts = ds.pixel_counts(val_source, val_rows)
    ds.check_mask_classes(val_counts, classes, "validation", config.val or config.train,
                          drop_unknown=config.drop_unknown_validation)
    if not val_counts[classes].any():
        raise ds.DataError("the validation tiles hold no labelled pixel of the model's "
                           "classes.")
    weights = ds.weights_from_counts(counts[classes]) if config.class_weights else None
    lookup = ds.label_lookup(classes)
    return RunData(source, val_source,
                   ds.Split(rows, lookup[source.codes[rows]]),
                   ds.Split(val_rows, lookup[val_source.codes[val_rows]]), classes, weights)


def _model_options(config: TrainConfig, patch_size: int) -> dict:
    if config.model.startswith("msmla"):
        return {"cbam": config.cbam}
    if config.model == "resnet20":
        return {"patch_size": patch_size}
    if model_kind(config.model) == "dense":
        return {"depth": config.depth, "width": config.width,
                "output_stride": config.output_stride}
    return {}


# -- the run -------------------------------------------------------------------------------------
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
    finished = False
    try:
        trainer = Trainer(config, dist_info, process_device(device_name, dist_info))
        trainer.setup(resume)
        trainer.loaders()
        trainer.start_logs()
        summary = trainer.fit()
        finished = True
        return summary
    finally:
        torch.set_num_threads(before)  # a caller in the same process keeps its setting
        leave_distributed(dist_info, finished)


class Trainer:
    """One training run, in the steps of torchgeo's trainer hooks: :meth:`setup` (data,
    statistics, model, optimiser, resume), :meth:`loaders`, :meth:`start_logs`, then per
    epoch :meth:`train_one_epoch` (:meth:`training_step` per batch), :meth:`validate`,
    :meth:`end_epoch` (log and :meth:`write_checkpoints`) and :meth:`early_stop`;
    :meth:`fit` runs the epochs. Rank 0 of several processes writes the files."""

    def __init__(self, config: TrainConfig, dist_info: Dist, device: torch.device):
        self.config, self.dist, self.device = config, dist_info, device
        self.dense = model_kind(config.model) == "dense"
        self.use_amp = device.type == "cuda" and config.amp != "off"
        self.tb = None
        self.clock = (time.perf_counter(), 0)  # (when fit started, its first epoch)

    # -- setup ----------------------------------------------------------------------------------
    def setup(self, resume: str | None) -> None:
        """Data, normalisation statistics, model, optimiser; with ``resume``, the state of
        that checkpoint. Seeds torch and numpy first: a seed gives the same run."""
        config = self.config
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        self.data = open_data(config, ConsoleFeedback() if self.dist.main else Feedback())
        payload = load_checkpoint(resume) if resume else None
        if payload is not None:
            check_resumable(payload, resume, self.data.classes, self.data.source.channels)
            self.mean, self.std = np.asarray(payload["mean"]), np.asarray(payload["std"])
        else:
            tile = self.data.source.patch_size  # tiles: chunks of about 2^20 pixels
            chunk = {"chunk": max(1, 2 ** 20 // (tile * tile))} if self.dense else {}
            self.mean, self.std = ds.channel_statistics(
                self.data.source, self.data.train_split.rows,
                max_samples=config.stats_samples or None, seed=config.seed, **chunk)
        options = _model_options(config, self.data.source.patch_size)
        self.model = self._build_model(options)
        self.optimizer = make_optimizer(config, self.model.parameters())
        self.model.to(self.device)
        if config.amp == "on" and self.device.type != "cuda":
            raise TrainingError("--amp on needs a CUDA device (mixed precision runs on GPUs).")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.state = RunState() if payload is None else \
            resume_training(payload, self.model, self.optimizer, self.scaler)
        self.net = wrap_model(self.model, self.device, self.dist)
        weights = self.data.weights
        self.weights = None if weights is None else torch.as_tensor(weights, device=self.device)
        self.description = describe_model(config, options, self.data.source,
                                          self.data.classes, self.mean, self.std)

    def _build_model(self, options: dict) -> torch.nn.Module:
        try:
            model = build_model(self.config.model, channels=len(self.data.source.channels),
                                classes=len(self.data.classes), **options)
        except ValueError as exc:
            raise TrainingError(str(exc)) from None
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = 1.0 - self.config.bn_momentum  # PyTorch's is Keras' 1 - m
        return model

    def _readers(self) -> tuple:
        """(training, validation) datasets: patches with labels, or tiles with masks."""
        config, data = self.config, self.data
        if self.dense:
            return (ds.TileReader(data.source, data.train_split.rows, self.mean, self.std,
                                  data.classes, augment=config.augment),
                    ds.TileReader(data.val_source, data.val_split.rows, self.mean, self.std,
                                  data.classes))
        return (ds.BatchReader(data.source, data.train_split, self.mean, self.std,
                               data.classes, soft_labels=config.soft_labels,
                               augment=config.augment),
                ds.BatchReader(data.val_source, data.val_split, self.mean, self.std,
                               data.classes, soft_labels=config.soft_labels, augment=False))

    def loaders(self) -> None:
        """Batches of sorted rows (one h5 read each), shared among the processes."""
        config, data, rank, world = self.config, self.data, self.dist.rank, self.dist.world
        train_reader, val_reader = self._readers()
        self.train_batches = ds.ShardedBatches(len(data.train_split.rows), config.batch_size,
                                               shuffle=True, seed=config.seed, rank=rank,
                                               world=world)
        val_size = config.batch_size if self.dense else max(config.batch_size, 256)
        val_batches = ds.ShardedBatches(len(data.val_split.rows), val_size,
                                        shuffle=False, rank=rank, world=world, even=False)
        loader_args = dict(batch_size=None, num_workers=config.workers,
                           pin_memory=self.device.type == "cuda",
                           persistent_workers=config.workers > 0,
                           worker_init_fn=_one_thread_per_worker if config.workers > 0 else None)
        self.train_loader = torch.utils.data.DataLoader(train_reader, sampler=self.train_batches,
                                                        **loader_args)
        self.val_loader = torch.utils.data.DataLoader(val_reader, sampler=val_batches,
                                                      **loader_args)

    def start_logs(self) -> None:
        """config.json and TensorBoard (rank 0); one line per process on what it trains."""
        config, data, out = self.config, self.data, self.config.out
        if self.dist.main:
            with Commit(inputs=[config.train, config.val]) as files:
                files.write_text(os.path.join(out, "config.json"),
                                 json.dumps(config.to_dict(), indent=2), "run configuration")
            self.tb = _tensorboard(out)
        print(f"rank {self.dist.rank}/{self.dist.world}: {config.model} on {self.device}, "
              f"{len(data.train_split.rows)} training / {len(data.val_split.rows)} validation "
              f"{'tiles' if self.dense else 'patches'}, {len(self.train_batches)} batches per "
              f"epoch on this rank", flush=True)

    # -- one epoch ------------------------------------------------------------------------------
    def train_one_epoch(self, epoch: int) -> dict:
        """One pass over the training batches; mean loss and OA over all processes."""
        config = self.config
        self.train_batches.set_epoch(epoch)
        self.net.train()
        total, seen, correct = 0.0, 0, 0
        batches = progress_bar(self.train_loader, len(self.train_batches), f"epoch {epoch + 1}",
                               config.progress and self.dist.main)
        for i, batch in enumerate(batches):
            stop_if_requested()  # Ctrl+C / SIGTERM, even when its exception was swallowed
            if config.max_steps_per_epoch and i >= config.max_steps_per_epoch:
                break
            loss, logits, labels = self.training_step(batch, epoch)
            batch_total, batch_seen, batch_correct = tally(loss, logits, labels, self.dense)
            total += batch_total
            seen += batch_seen
            correct += batch_correct
        total, seen, correct = all_reduce_sum([total, seen, correct], self.dist, self.device)
        return {"loss": total / max(seen, 1), "oa": correct / max(seen, 1)}

    def training_step(self, batch, epoch: int):
        """One optimiser step on one batch: (loss, logits, labels)."""
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, self.state.step, epoch)
        x, labels, *target = (t.to(self.device, non_blocking=True) for t in batch)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
            logits = self.net(x)
        if self.dense:  # labels: class index per pixel
            logits = on_label_grid(logits, labels)
            loss = pixel_loss(logits, labels, self.weights, self.config.loss,
                              self.config.focal_gamma)
        else:
            loss = soft_cross_entropy(logits, target[0], self.weights)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.state.step += 1
        return loss, logits, labels

    def validate(self) -> dict:
        return evaluate_loss(self.net, self.val_loader, self.device, self.use_amp, self.dist,
                             self.dense)

    def end_epoch(self, epoch: int, trained: dict, val: dict, started: float) -> None:
        """Note the epoch: its log row, and on rank 0 the CSV log, TensorBoard, checkpoints
        and a line on the console."""
        improved = self.state.record(val["loss"])
        row = {"epoch": epoch + 1, "step": self.state.step,
               "lr": learning_rate(self.config, self.state.step, epoch),
               "train_loss": trained["loss"], "train_oa": trained["oa"],
               "val_loss": val["loss"], "val_oa": val["oa"],
               "seconds": round(time.perf_counter() - started, 3)}
        self.state.history.append(row)
        if not self.dist.main:
            return
        _append_csv(os.path.join(self.config.out, "log.csv"), row)
        if self.tb is not None:
            for key, value in row.items():
                if key not in ("epoch", "step"):
                    self.tb.add_scalar(key, value, epoch + 1)
        self.write_checkpoints(epoch, val, improved)
        print(f"epoch {epoch + 1}/{self.config.epochs}: train loss {row['train_loss']:.4f} OA "
              f"{row['train_oa']:.3f} | val loss {val['loss']:.4f} OA {val['oa']:.3f}"
              f"{' (best)' if improved else ''} | {self.time_line(epoch, row['seconds'])}",
              flush=True)

    def time_line(self, epoch: int, seconds: float) -> str:
        """This epoch's time, the run's so far and an estimate of the time left: the mean
        epoch of this run times the epochs to go; "at most" when early stopping may end the
        run sooner."""
        since, first = self.clock
        elapsed = time.perf_counter() - since
        to_go = self.config.epochs - (epoch + 1)
        patience_left = self.config.patience - self.state.bad_epochs
        may_stop = patience_left < to_go
        to_go = to_go if patience_left > 0 else 0  # 0: early stopping ends the run now
        left = elapsed / max(1, epoch + 1 - first) * to_go
        return (f"{format_duration(seconds)}, {format_duration(elapsed)} elapsed, "
                f"{'at most' if may_stop else 'about'} {format_duration(left)} left")

    def write_checkpoints(self, epoch: int, val: dict, improved: bool) -> None:
        """last.pt after every epoch, best.pt when the validation loss is the lowest yet."""
        payload = checkpoint_payload(self.config, self.description, self.model,
                                     self.optimizer, self.scaler, self.state, epoch,
                                     {"loss": val["loss"], "oa": val["oa"]})
        save_checkpoint(os.path.join(self.config.out, "last.pt"), payload)
        if improved:
            save_checkpoint(os.path.join(self.config.out, "best.pt"), payload)

    def early_stop(self) -> bool:
        """True after ``patience`` epochs without a lower validation loss."""
        if self.state.bad_epochs < self.config.patience:
            return False
        if self.dist.main:
            print(f"early stop: no lower validation loss for {self.config.patience} epochs",
                  flush=True)
        return True

    # -- the epochs -----------------------------------------------------------------------------
    def fit(self) -> dict:
        """Epochs from where the run stands to ``epochs`` or an early stop; the summary."""
        stopped_early = False
        epoch = self.state.start_epoch - 1
        self.clock = (time.perf_counter(), self.state.start_epoch)
        for epoch in range(self.state.start_epoch, self.config.epochs):
            started = time.perf_counter()
            trained = self.train_one_epoch(epoch)
            self.end_epoch(epoch, trained, self.validate(), started)
            if self.early_stop():
                stopped_early = True
                break
        if self.tb is not None:
            self.tb.close()
        out = self.config.out
        return {"best": os.path.join(out, "best.pt"), "last": os.path.join(out, "last.pt"),
                "epochs": epoch + 1, "best_val_loss": self.state.best_val_loss,
                "stopped_early": stopped_early, "history": self.state.history,
                "rank": self.dist.rank, "world": self.dist.world}


def evaluate_loss(net, loader, device, use_amp: bool, dist_info: Dist,
                  dense: bool = False) -> dict:
    """Mean (unweighted) validation loss and OA, summed over all ranks (a dense model's:
    cross-entropy and OA per labelled pixel)."""
    net.eval()
    total, seen, correct = 0.0, 0, 0
    with torch.no_grad():
        for x, labels, *target in loader:
            x, labels = x.to(device), labels.to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = net(x)
            if dense:
                logits = on_label_grid(logits, labels)
                part = tally(pixel_loss(logits, labels), logits, labels, dense=True)
                total, seen, correct = total + part[0], seen + part[1], correct + part[2]
                continue
            total += float(soft_cross_entropy(logits, target[0].to(device))) * len(x)
            seen += len(x)
            correct += int((logits.argmax(1) == labels).sum())
    total, seen, correct = all_reduce_sum([total, seen, correct], dist_info, device)
    return {"loss": total / max(seen, 1), "oa": correct / max(seen, 1)}


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
