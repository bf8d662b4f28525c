"""Training data: So2Sat LCZ42 h5 files and the project's own patch files, read lazily.

Both sources give patches in *physical units* (reflectance for Sentinel-2, whatever the stack's
scale/offset turn the stored values into), as float32 ``N x C x P x P``, plus labels as an
index into the model's class list. Nothing reads a whole file: a batch is one h5 read of
sorted indices, and statistics are accumulated chunk by chunk.

Channel names
    So2Sat ``sen2`` holds Sentinel-2 B2, B3, B4, B5, B6, B7, B8, B8A, B11, B12 as reflectance;
    they are named :data:`S2_CHANNELS` (``S2:B02`` ... ``S2:B12``), the names the plugin's
    preprocessing gives the bands of an input stack. So2Sat ``sen1`` holds eight Sentinel-1
    channels, named :data:`S1_CHANNELS`: real and imaginary part of unfiltered VH and VV,
    Lee-filtered VH and VV intensity, and real and imaginary part of the Lee-filtered
    covariance off-diagonal element. Choose channels by name (``--channels S2:B02,S2:B03``);
    the default is all ten S2 bands.

For the model card: So2Sat stores reflectance, while a user's stack holds Sentinel-2 DN, so
a model trained on So2Sat S2 bands gets scale 1e-4 (DN / 10000) in its metadata; S1 channels
get scale 1 (:func:`lcz_qgis_plugin.core.channels.default_scale`). A patch file stores the
stack's own values and says how to scale them; that scale/offset goes into the card unchanged.

Patches are standardised as the model card says, ``(value - mean) / std`` per channel
(:func:`lcz_qgis_plugin.core.model.card.standardise`), so a model sees in training exactly
what the plugin gives it.

Tiles (dense models)
    A *tile file* (a patch file of schema 2 with ``sample_kind`` "tiles", written by
    ``lcz:extractpatches`` in tile mode) holds tiles ``N x C x T x T`` and a label mask per tile,
    ``masks`` (N, T, T) uint8: the LCZ code of every pixel in a training area, 0 for the pixels
    outside every area, which the loss ignores. :class:`TileReader` gives batches of
    standardised tiles and their masks as class indices, :data:`IGNORE` where a pixel has no
    label; augmentation flips and turns a tile and its mask together. A dense model trains
    only on tile files and a patch model never does (:func:`sample_kind_problem`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from lcz_qgis_plugin.core.channels import SO2SAT_CHANNELS, default_scale
from lcz_qgis_plugin.core.feedback import Feedback
from lcz_qgis_plugin.core.lcz_classes import LCZ_CODES, lcz_class
from lcz_qgis_plugin.core.model.card import standardise
from lcz_qgis_plugin.core.training_data.extraction import split_polygons
from lcz_qgis_plugin.core.training_data.patch_file import SPLITS, open_patch_file

S2_CHANNELS = list(SO2SAT_CHANNELS)
S1_CHANNELS = ["S1:VH_real", "S1:VH_imag", "S1:VV_real", "S1:VV_imag", "S1:VH_lee",
               "S1:VV_lee", "S1:C12_real", "S1:C12_imag"]
SO2SAT_KEYS = {"sen2": S2_CHANNELS, "sen1": S1_CHANNELS}
IGNORE = -100
"""The class index of a pixel without a label (mask 0, or a class the model leaves out): the
per-pixel loss and the metrics skip it (PyTorch's ``ignore_index`` default)."""


class DataError(ValueError):
    """Training data that cannot be used; the message says what is wrong and how to fix it."""


@dataclass
class Split:
    """One split of a source: the rows it uses and their label indices."""

    rows: np.ndarray          # sorted row numbers in the file
    labels: np.ndarray        # class index (position in class_codes) per row


class PatchSource:
    """Common interface: ``channels``, ``patch_size``, ``codes`` (LCZ code per row),
    ``read(rows)`` → physical values, ``soft(rows)`` → (n, 17) label distribution or None,
    ``card_scale`` / ``card_offset`` for the model card."""

    path: str
    channels: list[str]
    patch_size: int
    pixel_size: float = 10.0
    cell_size: float = 100.0
    has_soft_labels: bool = False
    sample_kind: str = "patches"   # "tiles": a tile file, with a label mask per tile
    has_masks: bool = False

    def __len__(self):
        return len(self.codes)


class So2SatFile(PatchSource):
    """An So2Sat LCZ42 h5 file (``sen1`` (N,32,32,8), ``sen2`` (N,32,32,10), ``label`` (N,17)).

    ``label`` may be one-hot or a distribution of votes (the label-distribution release);
    soft labels are used when the rows are not all one-hot.
    """

    def __init__(self, path: str, channels: list[str] | None = None):
        import h5py

        self.path = os.fspath(path)
        channels = list(channels or S2_CHANNELS)
        if not os.path.isfile(self.path):
            raise DataError(f"So2Sat file not found: {self.path}")
        try:
            f = h5py.File(self.path, "r")
        except OSError as exc:
            raise DataError(f"{self.path} cannot be read as HDF5 ({exc}).") from None
        with f:
            if "label" not in f:
                raise DataError(f"{self.path} has no 'label' dataset (keys: {sorted(f)}); an "
                                "So2Sat LCZ42 file holds 'sen1', 'sen2' and 'label'.")
            self.selection = []  # (key, column) per chosen channel
            for name in channels:
                for key, names in SO2SAT_KEYS.items():
                    if name in names:
                        if key not in f:
                            raise DataError(f"{self.path} has no '{key}' dataset, needed for "
                                            f"channel {name} (keys: {sorted(f)}).")
                        self.selection.append((key, names.index(name)))
                        break
                else:
                    raise DataError(
                        f"channel {name!r} is not in So2Sat LCZ42 data; choose from "
                        f"{', '.join(S2_CHANNELS + S1_CHANNELS)}.")
            label = f["label"]
            if label.ndim != 2 or label.shape[1] != len(LCZ_CODES):
                raise DataError(f"{self.path}: 'label' has shape {label.shape}; expected "
                                f"(N, {len(LCZ_CODES)}), one column per LCZ class.")
            n = label.shape[0]
            for key in {k for k, _ in self.selection}:
                shape = f[key].shape
                if len(shape) != 4 or shape[0] != n or shape[1] != shape[2]:
                    raise DataError(f"{self.path}: '{key}' has shape {shape}; expected "
                                    f"({n}, P, P, bands).")
            self.patch_size = int(f[self.selection[0][0]].shape[1])
            codes = np.empty(n, np.int64)
            soft = False
            for start in range(0, n, 65536):
                block = np.asarray(label[start:start + 65536], dtype=np.float32)
                codes[start:start + len(block)] = np.asarray(LCZ_CODES)[block.argmax(axis=1)]
                soft = soft or bool(((block != 0) & (block != 1)).any())
            self.codes = codes
            self.has_soft_labels = soft
        self.channels = channels
        self.card_scale = [default_scale(n) for n in channels]
        self.card_offset = [0.0] * len(channels)
        self._file = None

    def _open(self):
        if self._file is None:  # opened lazily, once per process (DataLoader workers)
            import h5py
            self._file = h5py.File(self.path, "r")
        return self._file

    def read(self, rows: np.ndarray) -> np.ndarray:
        f = self._open()
        rows = np.asarray(rows)
        out = np.empty((len(rows), len(self.channels), self.patch_size, self.patch_size),
                       np.float32)
        for key in dict.fromkeys(k for k, _ in self.selection):
            block = f[key][rows]  # (n, P, P, bands), one read per key
            for i, (k, column) in enumerate(self.selection):
                if k == key:
                    out[:, i] = block[..., column]
        return out

    def soft(self, rows: np.ndarray) -> np.ndarray | None:
        if not self.has_soft_labels:
            return None
        return np.asarray(self._open()["label"][np.asarray(rows)], dtype=np.float32)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"] = None
        return state


class PatchFile(PatchSource):
    """The project's patch file (schema ``lcz-patches``,
    :mod:`lcz_qgis_plugin.core.training_data.patch_file`)."""

    def __init__(self, path: str, channels: list[str] | None = None):
        from lcz_qgis_plugin.core.errors import LczError

        self.path = os.fspath(path)
        try:
            f, info = open_patch_file(self.path)
        except LczError as exc:
            raise DataError(str(exc)) from None
        with f:
            self.sample_kind = getattr(info, "sample_kind", "patches")
            self.has_masks = "masks" in f
            channels = list(channels or info.channels)
            missing = [c for c in channels if c not in info.channels]
            if missing:
                raise DataError(f"channel(s) {', '.join(missing)} not in {self.path}; it holds "
                                f"{', '.join(info.channels)}.")
            self.columns = [info.channels.index(c) for c in channels]
            self.codes = np.asarray(f["labels"][:], dtype=np.int64)
            self.polygon_ids = np.asarray(f["polygon_ids"][:], dtype=np.int64)
            self.split = np.asarray(f["split"][:]) if info.has_split else None
        self.info = info
        self.channels = channels
        self.patch_size = info.patch_size
        self.pixel_size, self.cell_size = info.pixel_size, info.cell_size
        self.has_soft_labels = info.has_soft_labels
        self._scale = np.asarray([info.scale[i] for i in self.columns], np.float32)
        self._offset = np.asarray([info.offset[i] for i in self.columns], np.float32)
        self.card_scale = [float(info.scale[i]) for i in self.columns]
        self.card_offset = [float(info.offset[i]) for i in self.columns]
        self._file = None

    def _open(self):
        if self._file is None:
            import h5py
            self._file = h5py.File(self.path, "r")
        return self._file

    def read(self, rows: np.ndarray) -> np.ndarray:
        block = np.asarray(self._open()["patches"][np.asarray(rows)], dtype=np.float32)
        block = block[:, self.columns]
        return block * self._scale[:, None, None] + self._offset[:, None, None]

    def soft(self, rows):
        if not self.has_soft_labels:
            return None
        return np.asarray(self._open()["soft_labels"][np.asarray(rows)], dtype=np.float32)

    def centres(self, rows) -> np.ndarray:
        """x, y (n, 2) of the patch (tile) centres at ``rows``, in the file's CRS."""
        return np.asarray(self._open()["centres"][np.asarray(rows)], dtype=np.float64)

    def masks(self, rows) -> np.ndarray:
        """The label masks (n, T, T) of the tiles at ``rows`` (LCZ codes, 0: no label)."""
        return np.asarray(self._open()["masks"][np.asarray(rows)], dtype=np.uint8)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"] = None
        return state


def open_source(spec: str, channels: list[str] | None = None):
    """``path`` or ``path#split`` → (source, row selection or None).

    A file with an ``lcz-patches`` schema attribute is a patch file, anything else is read as
    So2Sat. ``#train`` / ``#validation`` / ``#test`` picks rows of a patch file's split column.
    """
    import h5py

    path, _, split = spec.partition("#")
    if not os.path.isfile(path):
        raise DataError(f"data file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            is_patch_file = "schema" in f.attrs
    except OSError as exc:
        raise DataError(f"{path} cannot be read as HDF5 ({exc}).") from None
    source = PatchFile(path, channels) if is_patch_file else So2SatFile(path, channels)
    rows = None
    if split:
        if split not in SPLITS:
            raise DataError(f"unknown split '{split}' in {spec}; use #train, #validation or #test.")
        if getattr(source, "split", None) is None:
            raise DataError(f"{path} has no split column, so '#{split}' cannot be used; give "
                            "separate files, or use --val-fraction to split by polygon.")
        rows = np.flatnonzero(source.split == SPLITS[split])
    return source, rows


def polygon_split(polygon_ids: np.ndarray, fraction: float, seed: int,
                  codes: np.ndarray | None = None, feedback: Feedback | None = None):
    """Rows for (train, validation), by whole polygons: the rule of ``lcz:extractpatches``
    (:func:`lcz_qgis_plugin.core.training_data.extraction.split_polygons`), which picks per
    class the polygons whose patches come closest to ``fraction`` of the class's patches
    (one validation polygon at least once a class has two; one always stays in training).
    A polygon counts for the class most of its patches have (``codes``: LCZ code per row;
    None: one class)."""
    polygons, sizes = np.unique(polygon_ids, return_counts=True)
    classes = _polygon_classes(polygon_ids, codes, polygons)
    by_class: dict[int, list[int]] = {}
    for polygon, code in zip(polygons.tolist(), classes.tolist()):
        by_class.setdefault(code, []).append(polygon)
    split = split_polygons(by_class, fraction, 0.0, np.random.default_rng(seed),
                           feedback or Feedback(), dict(zip(polygons.tolist(), sizes.tolist())))
    val = [p for p, s in split.items() if s == SPLITS["validation"]]
    in_val = np.isin(polygon_ids, val)
    return np.flatnonzero(~in_val), np.flatnonzero(in_val)


def _polygon_classes(polygon_ids: np.ndarray, codes: np.ndarray | None,
                     polygons: np.ndarray) -> np.ndarray:
    """The LCZ code most patches of each polygon have (ties: the lower code); with ``codes``
    None, all polygons count as one class (the first code, named so in warnings)."""
    if codes is None:
        return np.full(len(polygons), LCZ_CODES[0], np.int64)
    where = np.searchsorted(polygons, polygon_ids)
    counts = np.zeros((len(polygons), max(LCZ_CODES) + 1), np.int64)
    np.add.at(counts, (where, np.asarray(codes, np.int64)), 1)
    return counts.argmax(axis=1)


def make_split(source: PatchSource, rows, class_codes: list[int], role: str,
               drop_unknown: bool = False) -> Split:
    """Rows and label indices; refuses labels outside ``class_codes`` with a clear message,
    or, with ``drop_unknown``, leaves those rows out and says so."""
    rows = np.arange(len(source)) if rows is None else np.sort(np.asarray(rows))
    codes = source.codes[rows]
    lookup = np.full(max(LCZ_CODES) + 1, -1, np.int64)
    lookup[np.asarray(class_codes)] = np.arange(len(class_codes))
    labels = lookup[codes]
    if (labels < 0).any():
        extra = sorted(set(codes[labels < 0].tolist()))
        names = ", ".join(f"{c} ({lcz_class(c).name})" for c in extra)
        if drop_unknown:
            keep = labels >= 0
            print(f"{role} data: {int((~keep).sum())} sample(s) of class(es) {names} left out: "
                  "the training data has none.", flush=True)
            return Split(rows=rows[keep], labels=labels[keep])
        raise DataError(f"the {role} data ({source.path}) holds class(es) {names} that the "
                        f"model does not predict ({class_codes}); add them to --classes, "
                        "remove those samples or pass --drop-unknown-validation.")
    return Split(rows=rows, labels=labels)


def choose_classes(train_codes: np.ndarray, requested: list[int] | None, path: str) -> list[int]:
    """The model's classes: those present in the training split, or the requested list.

    A requested class without a single training sample cannot be learned: refused.
    """
    present = sorted(set(int(c) for c in np.unique(train_codes)))
    if requested is None:
        if len(present) < 2:
            raise DataError(f"the training data ({path}) holds only class(es) {present}; at "
                            "least two LCZ classes are needed.")
        return present
    empty = [c for c in requested if c not in present]
    if empty:
        names = ", ".join(f"{c} ({lcz_class(c).name})" for c in empty)
        raise DataError(f"class(es) {names} have no training sample in {path}; add training "
                        "areas for them or leave them out of --classes.")
    return sorted(requested)


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse class frequency, normalised so a balanced data set gets weight 1 everywhere:
    w_c = N / (K * n_c). (The authors' code built the weights from per-sample weights by
    mistake; this is the intended inverse frequency.)"""
    return weights_from_counts(np.bincount(labels, minlength=n_classes))


def weights_from_counts(counts: np.ndarray) -> np.ndarray:
    """:func:`class_weights` from the samples (or labelled pixels) per class index."""
    counts = np.asarray(counts).astype(np.float64)
    n_classes = len(counts)
    if (counts == 0).any():
        raise DataError(f"class index(es) {np.flatnonzero(counts == 0).tolist()} have no "
                        "training sample; inverse-frequency weights are undefined.")
    return (counts.sum() / (n_classes * counts)).astype(np.float32)


def channel_statistics(source: PatchSource, rows: np.ndarray, chunk: int = 4096,
                       max_samples: int | None = None, seed: int = 0):
    """Per-channel mean and std of the training rows (physical units), read chunk by chunk."""
    rows = np.sort(np.asarray(rows))
    if max_samples and len(rows) > max_samples:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_samples, replace=False))
    total = np.zeros(len(source.channels))
    squares = np.zeros(len(source.channels))
    count = 0
    for start in range(0, len(rows), chunk):
        x = source.read(rows[start:start + chunk]).astype(np.float64)
        total += x.sum(axis=(0, 2, 3))
        squares += (x * x).sum(axis=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    std[std < 1e-6] = 1.0  # a constant channel: leave it unscaled
    return mean.astype(np.float32), std.astype(np.float32)


class BatchReader(torch.utils.data.Dataset):
    """Map-style dataset whose items are whole batches: ``reader[sorted_rows]`` → tensors.

    Used with a :class:`ShardedBatches` sampler and ``batch_size=None`` in a DataLoader, so a
    batch is one h5 read and workers each open their own file handle.
    """

    def __init__(self, source: PatchSource, split: Split, mean, std, class_codes: list[int],
                 soft_labels: bool = False, augment: bool = False, seed: int = 0):
        self.source, self.split = source, split
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.class_codes = list(class_codes)
        self.n_classes = len(class_codes)
        self.soft_labels = soft_labels and source.has_soft_labels
        self.augment = augment
        self.seed = seed
        self._class_columns = None

    def __len__(self):
        return len(self.split.rows)

    def __getitem__(self, positions):
        positions = np.sort(np.asarray(positions))
        rows = self.split.rows[positions]
        x = torch.from_numpy(standardise(self.source.read(rows), self.mean, self.std))
        labels = torch.from_numpy(self.split.labels[positions])
        target = torch.nn.functional.one_hot(labels, self.n_classes).float()
        if self.soft_labels:
            soft = self.source.soft(rows)
            soft = soft[:, self._columns()]
            sums = soft.sum(axis=1, keepdims=True)
            target = torch.from_numpy(np.where(sums > 0, soft / np.maximum(sums, 1e-12),
                                               target.numpy())).float()
        if self.augment:
            x = flip_rotate(x)  # torch's RNG: seeded by the trainer, per worker by DataLoader
        return x, labels, target

    def _columns(self):
        if self._class_columns is None:
            codes = self.class_codes
            self._class_columns = [LCZ_CODES.index(c) for c in codes]
        return self._class_columns


def flip_rotate(x: torch.Tensor, generator: torch.Generator | None = None,
                masks: torch.Tensor | None = None):
    """Random horizontal flip and 0/90/180/270 degree rotation per patch (the dihedral group).
    With ``masks`` (n, T, T), each tile's mask gets its tile's flip and turn: (x, masks)."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    turns = torch.randint(0, 4, (x.shape[0],), generator=generator)
    x = _flipped_and_turned(x, flip, turns)
    if masks is None:
        return x
    return x, _flipped_and_turned(masks, flip, turns)


def _flipped_and_turned(x: torch.Tensor, flip: torch.Tensor, turns: torch.Tensor):
    x = x.clone()
    x[flip] = x[flip].flip(-1)
    for k in (1, 2, 3):
        pick = turns == k
        if pick.any():
            x[pick] = torch.rot90(x[pick], k, dims=(-2, -1))
    return x


# -- tiles and label masks (dense models) --------------------------------------------------------
def sample_kind_problem(model: str, dense: bool, source: PatchSource, spec: str) -> str | None:
    """Why ``model`` (dense or not) cannot train on ``source``, or None: a dense model learns
    from tiles with label masks, a patch model from patches centred on labelled cells."""
    path = spec.partition("#")[0]
    tiles = source.sample_kind == "tiles"
    if dense and not tiles:
        return (f"--model {model} is a dense model: it learns from tiles with a label mask per "
                f"pixel, and {path} holds patches. Extract tiles (lcz:extractpatches with "
                f"SAMPLES tiles) and train on that file, or train a patch model such as "
                f"msmla18 on this one.")
    if tiles and not dense:
        return (f"{path} is a tile file (tiles with per-pixel label masks, for dense models); "
                f"--model {model} is a patch model. Train --model unet on it, or extract "
                f"patches (lcz:extractpatches with SAMPLES patches) for {model}.")
    if tiles and not source.has_masks:
        return (f"{path} says it holds tiles but has no 'masks' dataset: it is incomplete. "
                f"Extract the tiles again with lcz:extractpatches.")
    return None


def label_lookup(class_codes: list[int]) -> np.ndarray:
    """Mask value (LCZ code 0-17) -> class index of the model; :data:`IGNORE` for 0 (no
    label) and for codes the model does not predict."""
    lookup = np.full(max(LCZ_CODES) + 1, IGNORE, np.int64)
    lookup[np.asarray(class_codes)] = np.arange(len(class_codes))
    return lookup


def pixel_counts(source: PatchSource, rows: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Labelled pixels per LCZ code in the masks of ``rows`` (index = code, 0: unlabelled)."""
    rows = np.sort(np.asarray(rows))
    counts = np.zeros(max(LCZ_CODES) + 1, np.int64)
    for start in range(0, len(rows), chunk):
        masks = source.masks(rows[start:start + chunk])
        counts += np.bincount(masks.ravel(), minlength=len(counts))[:len(counts)]
    return counts


def check_mask_classes(counts: np.ndarray, class_codes: list[int], role: str, path: str,
                       drop_unknown: bool = False) -> None:
    """Refuse masks with labels outside ``class_codes`` (as :func:`make_split` refuses
    patches), or with ``drop_unknown`` say that those pixels are left out (ignored)."""
    extra = [c for c in LCZ_CODES if counts[c] and c not in class_codes]
    if not extra:
        return
    names = ", ".join(f"{c} ({lcz_class(c).name})" for c in extra)
    if drop_unknown:
        print(f"{role} data: {int(sum(counts[c] for c in extra))} labelled pixel(s) of "
              f"class(es) {names} left out: the training data has none.", flush=True)
        return
    raise DataError(f"the {role} data ({path}) holds pixels of class(es) {names} that the "
                    f"model does not predict ({class_codes}); add them to --classes, remove "
                    "those training areas or pass --drop-unknown-validation.")


class TileReader(torch.utils.data.Dataset):
    """Map-style dataset whose items are whole batches of tiles, like :class:`BatchReader`:
    ``reader[positions]`` -> (standardised tiles (n, C, T, T) float32, class index per pixel
    (n, T, T) int64, :data:`IGNORE` where the mask has no label the model predicts)."""

    def __init__(self, source: PatchSource, rows: np.ndarray, mean, std,
                 class_codes: list[int], augment: bool = False):
        self.source, self.rows = source, np.asarray(rows)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.lookup = label_lookup(class_codes)
        self.augment = augment

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, positions):
        rows = self.rows[np.sort(np.asarray(positions))]
        x = torch.from_numpy(standardise(self.source.read(rows), self.mean, self.std))
        target = torch.from_numpy(self.lookup[self.source.masks(rows)])
        if self.augment:
            x, target = flip_rotate(x, masks=target)
        return x, target


class ShardedBatches(torch.utils.data.Sampler):
    """Shuffled batches of sorted positions; with several DDP ranks each gets its own share.

    Every rank yields the same number of batches (the data are cut to a multiple of the world
    size), so collective operations never wait on a rank that has finished.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0,
                 world: int = 1, drop_last: bool = False, even: bool = True):
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.seed, self.rank, self.world = seed, rank, world
        self.drop_last, self.even = drop_last, even
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def _positions(self):
        if self.shuffle:  # the same permutation on every rank: same seed and epoch
            order = np.random.default_rng(self.seed + self.epoch).permutation(self.n)
        else:
            order = np.arange(self.n)
        if self.world == 1:
            return order
        if not self.even:  # evaluation: every sample once, shares may differ by one
            return np.array_split(order, self.world)[self.rank]
        per_rank = self.n // self.world
        return order[self.rank * per_rank:(self.rank + 1) * per_rank]

    def __iter__(self):
        mine = self._positions()
        stop = len(mine) - (len(mine) % self.batch_size if self.drop_last else 0)
        for start in range(0, stop, self.batch_size):
            batch = mine[start:start + self.batch_size]
            if len(batch):
                yield np.sort(batch)

    def __len__(self):
        per_rank = len(self._positions())
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)
