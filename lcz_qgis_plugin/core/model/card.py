"""The model contract: what an LCZ model's ONNX file says about itself (schema version 1).

The ONNX file is the one interface between the training package and the plugin. Besides a
float32 input ``N x C x H x W`` and an output ``N x K`` (K = number of classes), the file's
``metadata_props`` carry the keys below. Values are JSON, except plain strings, which are
stored as they are so that tools such as Netron show them readably.

======================  ==========================================================
key                     meaning
======================  ==========================================================
lcz.schema_version      ``1`` (patch models) or ``2`` (dense models)
lcz.name                model family/name: msmla50, msmla18, sen2lcz, resnet20, rf ...
lcz.version             model version (free text, e.g. ``2026.11.0``)
lcz.channels            ordered input channel names, e.g. ``["S2:B02", ...]``; matched
                        to the band descriptions of the input stack
lcz.scale, lcz.offset   per channel: value = raw * scale + offset (So2Sat: 1e-4, 0)
lcz.mean, lcz.std       per channel normalisation after scaling: (value - mean) / std
lcz.patch_size          patch edge in pixels (32, 48, ...)
lcz.pixel_size          pixel size in metres the model was trained at (10)
lcz.cell_size           default output cell size in metres (100)
lcz.class_codes         LCZ code (1-17) of each output column, in order
lcz.class_names         names of those classes (informative; the plugin uses its table)
lcz.class_colours       their colours (informative)
lcz.output_kind         ``logits`` or ``probabilities``
lcz.temperature         calibration temperature T (0.05-20); probabilities = softmax(z / T),
                        z = logits, or log(probabilities) for a model that outputs them
lcz.provenance          JSON object: dataset, training date, metrics, source weights ...
lcz.precision_checks    optional JSON object: how far a reduced-precision engine's
                        result was measured from float32 on real patches, e.g.
                        ``{"bfloat16": {"same_class": 0.998, "patches": 551, ...}}``
                        (written by ``python -m training export`` or
                        ``check-precision``). ``lcz:classify``'s automatic device
                        considers bfloat16 only for a model whose check passed
                        (:func:`ModelCard.passes_precision_check`). The ``int8``
                        entry also names the calibrated int8 (QDQ) variant of the
                        model, a second ONNX file beside it: ``"file"`` (a file
                        name, e.g. ``msmla50.int8.onnx``) and ``"sha256"`` (that
                        file's SHA-256; a different file of that name is not
                        used). A dense model's check counts 100 m
                        cells of a tile file (``"unit": "cells"``;
                        the count stays under ``patches``).
lcz.model_kind          ``patch`` (absent: patch) or ``dense``. A patch model maps
                        ``N x C x P x P`` to ``N x K``, one patch per cell; a dense
                        model maps ``N x C x H x W`` to ``N x K x H/s x W/s`` (any
                        H, W that are multiples of ``lcz.tile_multiple``) and is
                        written with schema version 2
lcz.output_stride       dense: s, input pixels per output pixel (1-64)
lcz.receptive_field     dense: the edge in pixels of the area one output pixel
                        sees (1-4096); tiles overlap by at least half of it
lcz.tile_multiple       dense: tile edges and origins are multiples of this
                        (2^depth for a U-Net; a multiple of s)
======================  ==========================================================

Model files are untrusted input (downloaded, shared, possibly crafted), so every value is
bounded before use, in time linear in the metadata's size, and every message quotes at most
a few items of what it refuses: the ``lcz.*`` values together hold at most 1 MB of text and
JSON nested at most 20 levels deep (both checked before the JSON is parsed); patch size
1-512 px; 1-256 uniquely named channels; 2-17 unique LCZ codes; temperature 0.05-20;
scale, offset, mean and std finite with magnitudes up to 1e9 (std at least 1e-9); pixel
size 0.1-1000 m; cell size from the pixel size to 100 km; names, version and channel names
up to 200 printable characters (the constants below).

This module only *reads and validates* (the plugin side); writing the keys into an ONNX file
is :mod:`lcz_qgis_plugin.core.model.card_writer` (the training side), which uses
:meth:`ModelCard.to_metadata_props` from here so that both sides share one definition.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ModelError
from ..lcz_classes import LCZ_CODES, lcz_class

SCHEMA_VERSION = 2
"""The newest schema this plugin reads. Patch models are written as schema 1 (what every
version of the plugin reads); dense models as schema 2, so that a plugin that predates them
asks to be updated instead of misreading them."""
PATCH_SCHEMA_VERSION = 1
DENSE_SCHEMA_VERSION = 2
PREFIX = "lcz."
OUTPUT_KINDS = ("logits", "probabilities")
MODEL_KINDS = ("patch", "dense")
# A reduced-precision engine may run automatically when it gave float32's class on at least
# this share of at least this many real patches. The bar for "the same map" is 99 %
# of cells; the margin covers a scene that differs from the patches the check used.
SAME_CLASS_REQUIRED = 0.995
PATCHES_REQUIRED = 200

# Bounds of a model card (see the module's docstring): far beyond any real LCZ model, tight
# enough that a crafted card cannot hang validation, exhaust memory or skew the map.
MAX_METADATA_CHARS = 1_000_000   # all lcz.* keys and values together
MAX_SCHEMA_VERSION = 1000        # a later schema asks for a newer plugin; beyond, a broken card
MAX_JSON_DEPTH = 20
MAX_TEXT = 200                   # characters of lcz.name, lcz.version, each channel name
MAX_PATCH_SIZE = 512             # pixels (the So2Sat models use 32, MSMLA 48)
MAX_CHANNELS = 256
MAX_MAGNITUDE = 1e9              # of every scale, offset, mean and std
MIN_STD = 1e-9
PIXEL_SIZE_RANGE = (0.1, 1000.0)  # metres
MAX_CELL_SIZE = 100_000.0        # metres
TEMPERATURE_RANGE = (0.05, 20.0)  # what 'python -m training calibrate' can fit
MAX_PRECISION_CHECKS = 16
MAX_CHECK_PATCHES = 10 ** 9
MAX_OUTPUT_STRIDE = 64           # pixels of input per output pixel (dense models)
MAX_RECEPTIVE_FIELD = 4096       # pixels (dense models)
MAX_TILE_MULTIPLE = 1024         # pixels (dense models)

_EXPORT_HINT = ("Export the model with 'python -m training export', or add the metadata with "
                "lcz_qgis_plugin.core.model.card_writer.write_model_card().")


@dataclass
class ModelCard:
    """Everything the plugin needs to know to run a model on an input stack."""

    name: str
    channels: list[str]
    patch_size: int
    scale: list[float]
    offset: list[float]
    mean: list[float]
    std: list[float]
    pixel_size: float = 10.0
    cell_size: float = 100.0
    class_codes: list[int] = field(default_factory=lambda: list(LCZ_CODES))
    output_kind: str = "logits"
    temperature: float = 1.0
    version: str = "0"
    provenance: dict[str, Any] = field(default_factory=dict)
    precision_checks: dict[str, dict] = field(default_factory=dict)
    schema_version: int = PATCH_SCHEMA_VERSION
    model_kind: str = "patch"
    """``patch``: one prediction per patch centred on a cell (``N x C x P x P`` ->
    ``N x K``). ``dense``: a fully convolutional model predicting every pixel of a tile
    (``N x C x H x W`` -> ``N x K x H/s x W/s``, s = :attr:`output_stride`)."""
    output_stride: int = 1
    """Dense models: input pixels per output pixel."""
    receptive_field: int = 0
    """Dense models: the edge in input pixels of the area that one output pixel sees; tiles
    overlap by at least half of it, so every kept pixel saw all of its context."""
    tile_multiple: int = 1
    """Dense models: tile edges (and tile origins) must be multiples of this (2^depth for a
    U-Net), so that every tile sees the same pooling grid."""

    def __post_init__(self):
        if self.model_kind == "dense" and self.schema_version < DENSE_SCHEMA_VERSION:
            self.schema_version = DENSE_SCHEMA_VERSION

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def n_classes(self) -> int:
        return len(self.class_codes)

    def describe(self) -> str:
        return (f"{self.name} version {self.version} ({self.n_channels} channels, "
                f"{self.patch_size}x{self.patch_size} px at {self.pixel_size:g} m, "
                f"{self.n_classes} classes)")

    def passes_precision_check(self, precision: str) -> bool:
        """Whether ``precision`` (e.g. ``bfloat16``) was measured to give float32's class on
        enough real patches for the automatic device to use it."""
        check = self.precision_checks.get(precision)
        return bool(check) and (check["same_class"] >= SAME_CLASS_REQUIRED
                                and check["patches"] >= PATCHES_REQUIRED)

    # -- the rules both sides apply (one definition: plugin, training, evaluation) ----------
    @property
    def is_dense(self) -> bool:
        return self.model_kind == "dense"

    @property
    def input_shape(self) -> tuple:
        """The model's input, ``(N, C, P, P)`` (dense: ``(N, C, H, W)``), free sizes None."""
        if self.is_dense:
            return (None, self.n_channels, None, None)
        return (None, self.n_channels, self.patch_size, self.patch_size)

    @property
    def output_shape(self) -> tuple:
        """The model's output, ``(N, K)`` (dense: ``(N, K, H/s, W/s)``), free sizes None."""
        if self.is_dense:
            return (None, self.n_classes, None, None)
        return (None, self.n_classes)

    def gain_and_bias(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel float32 ``(gain, bias)`` with model input = raw * gain + bias, i.e.
        ``((raw * scale + offset) - mean) / std`` folded into one multiply-add (cheaper on
        every pixel of a strip than the four steps; :meth:`standardise` is the last two)."""
        std = np.asarray(self.std, dtype=np.float64)
        gain = np.asarray(self.scale, dtype=np.float64) / std
        bias = (np.asarray(self.offset, dtype=np.float64) - np.asarray(self.mean)) / std
        return gain.astype(np.float32), bias.astype(np.float32)

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        """Model input from raw values ``(..., C, H, W)`` (the stack's own units)."""
        gain, bias = self.gain_and_bias()
        return (np.asarray(raw, dtype=np.float32) * gain[:, None, None]
                + bias[:, None, None]).astype(np.float32)

    def standardise(self, values: np.ndarray) -> np.ndarray:
        """Model input from values already scaled to the card's units (``raw * scale +
        offset``, as training patches are read): ``(values - mean) / std``."""
        return standardise(values, self.mean, self.std)

    def scores(self, output: np.ndarray, dtype=np.float32) -> np.ndarray:
        """z, what the calibrated softmax divides by the temperature: the logits, or
        log(probabilities) (clipped at 1e-12) for a model that outputs probabilities."""
        z = np.asarray(output, dtype=dtype)
        return np.log(np.clip(z, 1e-12, None)) if self.output_kind == "probabilities" else z

    def probabilities(self, output: np.ndarray, temperature: float | None = None,
                      dtype=np.float32) -> np.ndarray:
        """Calibrated class probabilities ``(N, K)`` from the model's raw output:
        ``softmax(z / T)``, z = the logits, or log(probabilities) for a model that outputs
        probabilities; T = the card's temperature unless given (calibration tries others).
        Computed in ``dtype`` (evaluation uses float64)."""
        t = self.temperature if temperature is None else temperature
        if self.output_kind == "probabilities" and t == 1.0:
            p = np.asarray(output, dtype=dtype)
            return p / p.sum(axis=-1, keepdims=True)
        return softmax(self.scores(output, dtype), t)

    def shape_mismatch(self, input_shape, output_shape) -> str | None:
        """What contradicts the card in a graph's input and output shapes (dimensions given
        as ints, or anything else where free), or None. One check for the plugin's engines
        and the training package's writer."""
        def contradicts(shape, expected) -> bool:
            return len(shape) != len(expected) or any(
                isinstance(d, int) and e is not None and d != e for d, e in zip(shape, expected))

        def described(expected) -> str:
            return "(" + ", ".join("N" if i == 0 else "H" if i == len(expected) - 2 and e is None
                                   else "W" if e is None else str(e)
                                   for i, e in enumerate(expected)) + ")"

        if contradicts(input_shape, self.input_shape):
            return (f"input shape {list(input_shape)} does not match the card "
                    f"{described(self.input_shape)}")
        if contradicts(output_shape, self.output_shape):
            return (f"output shape {list(output_shape)} does not match the card "
                    f"{described(self.output_shape)}")
        return None

    # -- serialisation ---------------------------------------------------------------------
    def to_metadata_props(self) -> dict[str, str]:
        """The ``metadata_props`` entries for this card (validated first)."""
        self.validate()
        values = {
            "schema_version": self.schema_version,
            "name": self.name,
            "version": self.version,
            "channels": list(self.channels),
            "scale": [float(v) for v in self.scale],
            "offset": [float(v) for v in self.offset],
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "patch_size": int(self.patch_size),
            "pixel_size": float(self.pixel_size),
            "cell_size": float(self.cell_size),
            "class_codes": [int(c) for c in self.class_codes],
            "class_names": [lcz_class(c).name for c in self.class_codes],
            "class_colours": [lcz_class(c).colour for c in self.class_codes],
            "output_kind": self.output_kind,
            "temperature": float(self.temperature),
            "provenance": self.provenance,
        }
        if self.precision_checks:
            values["precision_checks"] = self.precision_checks
        if self.is_dense:  # patch cards stay as every plugin version reads them
            values.update(schema_version=DENSE_SCHEMA_VERSION, model_kind=self.model_kind,
                          output_stride=int(self.output_stride),
                          receptive_field=int(self.receptive_field),
                          tile_multiple=int(self.tile_multiple))
        props = {PREFIX + key: (value if isinstance(value, str) else json.dumps(value))
                 for key, value in values.items()}
        _check_metadata_size(props, "the model card")  # what the reader would refuse
        return props

    @classmethod
    def from_metadata_props(cls, props: Mapping[str, str],
                            source: str = "the model") -> ModelCard:
        """Parse and validate ``metadata_props``; raises :class:`ModelError` naming the problem."""
        if PREFIX + "schema_version" not in props:
            raise ModelError(
                f"{source} carries no LCZ model metadata (no '{PREFIX}schema_version' in its "
                f"ONNX metadata_props), so the plugin cannot tell which bands it expects or how "
                f"to scale them. {_EXPORT_HINT}")
        _check_metadata_size(props, source)
        version = _parse(props, "schema_version", int, source)
        if SCHEMA_VERSION < version <= MAX_SCHEMA_VERSION:
            raise ModelError(
                f"{source} uses model metadata schema {version}, but this plugin "
                f"understands schema {SCHEMA_VERSION} at most. Update the LCZ plugin.")
        if not 1 <= version <= SCHEMA_VERSION:
            raise ModelError(f"{source}: invalid metadata schema version {_brief(version)}. "
                             f"{_EXPORT_HINT}")
        card = cls(
            schema_version=version,
            name=_parse(props, "name", str, source),
            version=_parse(props, "version", str, source, default="0"),
            channels=_parse(props, "channels", list, source),
            scale=_parse(props, "scale", list, source),
            offset=_parse(props, "offset", list, source),
            mean=_parse(props, "mean", list, source),
            std=_parse(props, "std", list, source),
            patch_size=_parse(props, "patch_size", int, source),
            pixel_size=_parse(props, "pixel_size", float, source),
            cell_size=_parse(props, "cell_size", float, source),
            class_codes=_parse(props, "class_codes", list, source),
            output_kind=_parse(props, "output_kind", str, source),
            temperature=_parse(props, "temperature", float, source, default=1.0),
            provenance=_parse(props, "provenance", dict, source, default={}),
            precision_checks=_parse(props, "precision_checks", dict, source, default={}),
            model_kind=_parse(props, "model_kind", str, source, default="patch"),
            output_stride=_parse(props, "output_stride", int, source, default=1),
            receptive_field=_parse(props, "receptive_field", int, source, default=0),
            tile_multiple=_parse(props, "tile_multiple", int, source, default=1),
        )
        if card.is_dense and version < DENSE_SCHEMA_VERSION:
            raise ModelError(f"{source}: a dense model's card must use metadata schema "
                             f"{DENSE_SCHEMA_VERSION}, not {version}. {_EXPORT_HINT}")
        card.validate(source)
        return card

    # -- validation ------------------------------------------------------------------------
    def validate(self, source: str = "the model") -> None:
        """Raise :class:`ModelError` if the card is inconsistent or out of bounds.

        Counts are bounded before items are looked at and duplicates are counted, so every
        check takes time linear in the card's size; messages quote at most a few items."""
        def bad(msg: str) -> ModelError:
            return ModelError(f"{source} has invalid LCZ model metadata: {msg}. {_EXPORT_HINT}")

        for key, required in (("name", True), ("version", False)):
            problem = _text_problem(getattr(self, key), required)
            if problem:
                raise bad(f"'lcz.{key}' {problem}")
        self._validate_channels(bad)
        self._validate_scaling(bad)
        self._validate_geometry(bad)
        self._validate_classes(bad)
        self._validate_json_objects(bad)
        self._validate_kind(bad)

    def _validate_kind(self, bad) -> None:
        if self.model_kind not in MODEL_KINDS:
            raise bad(f"'lcz.model_kind' is {_brief(self.model_kind)}; expected one of "
                      f"{MODEL_KINDS}")
        dense = {"output_stride": MAX_OUTPUT_STRIDE, "receptive_field": MAX_RECEPTIVE_FIELD,
                 "tile_multiple": MAX_TILE_MULTIPLE}
        if not self.is_dense:
            if (self.output_stride, self.receptive_field, self.tile_multiple) != (1, 0, 1):
                raise bad("'lcz.output_stride', 'lcz.receptive_field' and 'lcz.tile_multiple' "
                          "belong to dense models; this card's 'lcz.model_kind' is patch")
            return
        for key, high in dense.items():
            value = getattr(self, key)
            if not _is_whole(value) or not 1 <= value <= high:
                raise bad(f"'lcz.{key}' is {_brief(value)}; a dense model needs a whole number "
                          f"from 1 to {high} (pixels)")
        if self.tile_multiple % self.output_stride:
            raise bad(f"'lcz.tile_multiple' ({self.tile_multiple}) must be a multiple of "
                      f"'lcz.output_stride' ({self.output_stride})")

    def _validate_channels(self, bad) -> None:
        channels = self.channels
        if not isinstance(channels, list) or not channels:
            raise bad("'lcz.channels' must be a non-empty list of channel names")
        if len(channels) > MAX_CHANNELS:
            raise bad(f"'lcz.channels' lists {len(channels):,} channels; an LCZ model takes "
                      f"at most {MAX_CHANNELS}")
        for name in channels:
            problem = _text_problem(name, required=True)
            if problem:
                raise bad(f"a channel name in 'lcz.channels' {problem}")
        dupes = sorted(name for name, count in Counter(channels).items() if count > 1)
        if dupes:
            raise bad(f"'lcz.channels' names {_some(dupes)} more than once")

    def _validate_scaling(self, bad) -> None:
        n = len(self.channels)
        for key in ("scale", "offset", "mean", "std"):
            values = getattr(self, key)
            if not isinstance(values, list) or len(values) != n:
                raise bad(f"'lcz.{key}' must hold one number per channel ({n})")
            wrong = [v for v in values if not _is_finite_number(v) or abs(v) > MAX_MAGNITUDE]
            if wrong:
                raise bad(f"'lcz.{key}' holds {_some(wrong)}; each value must be a finite "
                          f"number of magnitude at most {MAX_MAGNITUDE:g}")
        if any(v < MIN_STD for v in self.std):
            raise bad(f"'lcz.std' must be positive for every channel (at least {MIN_STD:g})")
        if any(v == 0 for v in self.scale):
            raise bad("'lcz.scale' must not be zero")

    def _validate_geometry(self, bad) -> None:
        if not _is_whole(self.patch_size) or not 1 <= self.patch_size <= MAX_PATCH_SIZE:
            raise bad(f"'lcz.patch_size' is {_brief(self.patch_size)}; it must be a positive "
                      f"integer of at most {MAX_PATCH_SIZE} (pixels)")
        bounds = {"pixel_size": PIXEL_SIZE_RANGE + ("metres",),
                  "cell_size": (self.pixel_size, MAX_CELL_SIZE, "metres, at least the pixel "
                                                                "size"),
                  "temperature": TEMPERATURE_RANGE + ("",)}
        for key, (low, high, unit) in bounds.items():
            value = getattr(self, key)
            if not (_is_finite_number(value) and low <= value <= high):
                unit = f" ({unit})" if unit else ""
                raise bad(f"'lcz.{key}' is {_brief(value)}; it must be a positive number from "
                          f"{low:g} to {high:g}{unit}")

    def _validate_classes(self, bad) -> None:
        codes = self.class_codes
        if (not isinstance(codes, list) or not codes
                or not all(_is_whole(c) for c in codes[:len(LCZ_CODES) + 1])):
            raise bad("'lcz.class_codes' must be a non-empty list of LCZ codes 1-17")
        if len(codes) > len(LCZ_CODES):
            raise bad(f"'lcz.class_codes' lists {len(codes):,} classes; there are "
                      f"{len(LCZ_CODES)} LCZ classes, each listed at most once")
        unknown = [c for c in codes if c not in LCZ_CODES]
        if unknown:
            raise bad(f"'lcz.class_codes' holds {_some(unknown)}, not LCZ codes 1-17")
        twice = sorted(code for code, count in Counter(codes).items() if count > 1)
        if twice:
            raise bad(f"'lcz.class_codes' lists a class twice ({_some(twice)})")
        if len(codes) < 2:
            raise bad("'lcz.class_codes' must list at least two classes")
        if not isinstance(self.output_kind, str) or self.output_kind not in OUTPUT_KINDS:
            raise bad(f"'lcz.output_kind' is {_brief(self.output_kind)}; expected one of "
                      f"{OUTPUT_KINDS}")

    def _validate_json_objects(self, bad) -> None:
        for key in ("provenance", "precision_checks"):
            value = getattr(self, key)
            if not isinstance(value, dict):
                raise bad(f"'lcz.{key}' must be a JSON object")
            if _nests_deeper(value, MAX_JSON_DEPTH):
                raise bad(f"'lcz.{key}' nests more than {MAX_JSON_DEPTH} levels deep")
        if len(self.precision_checks) > MAX_PRECISION_CHECKS:
            raise bad(f"'lcz.precision_checks' holds {len(self.precision_checks):,} entries; "
                      f"at most {MAX_PRECISION_CHECKS} (one per precision) are allowed")
        for precision, check in self.precision_checks.items():
            if not (isinstance(precision, str) and len(precision) <= MAX_TEXT
                    and _is_valid_check(check)):
                raise bad(f"'lcz.precision_checks' entry {_brief(precision)} needs "
                          f"'same_class' (a share 0-1) and 'patches' (a count from 1 to "
                          f"{MAX_CHECK_PATCHES:,})")
            if precision == "int8" and not _is_variant(check):
                raise bad("'lcz.precision_checks' entry 'int8' needs 'file' (the int8 model's "
                          "file name, beside this model) and 'sha256' (its SHA-256 in hex)")


def _is_variant(check: dict) -> bool:
    """An int8 check names its variant: a plain file name beside the model and its hash."""
    name, digest = check.get("file"), check.get("sha256")
    return (isinstance(name, str) and name.endswith(".onnx") and name == name.strip()
            and len(name) <= MAX_TEXT and "/" not in name and "\\" not in name
            and name not in (".", "..")
            and isinstance(digest, str) and len(digest) == 64
            and all(c in "0123456789abcdef" for c in digest))


def standardise(values: np.ndarray, mean, std) -> np.ndarray:
    """``(values - mean) / std`` per channel of ``(..., C, H, W)``, in float32: the card's
    normalisation after scaling (:meth:`ModelCard.standardise`), also for training, which
    standardises its patches before a card exists."""
    mean = np.asarray(mean, dtype=np.float32)[:, None, None]
    std = np.asarray(std, dtype=np.float32)[:, None, None]
    return (np.asarray(values, dtype=np.float32) - mean) / std


def softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(z / T)`` over the last axis, in z's float type; z itself is left as it is.
    The calibrated probabilities of the contract (:meth:`ModelCard.probabilities`)."""
    z = z / z.dtype.type(temperature)
    z -= z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def _is_finite_number(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _is_whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_valid_check(check: object) -> bool:
    return (isinstance(check, dict) and _is_finite_number(check.get("same_class"))
            and 0 <= check["same_class"] <= 1 and _is_whole(check.get("patches"))
            and 1 <= check["patches"] <= MAX_CHECK_PATCHES)


def _text_problem(value: object, required: bool) -> str | None:
    """Why ``value`` cannot be a name (None when it can): text that fits on a line."""
    if not isinstance(value, str):
        return f"is not text: {_brief(value)}"
    if required and not value.strip():
        return "is empty"
    if len(value) > MAX_TEXT:
        return f"is {len(value):,} characters long; at most {MAX_TEXT} are allowed"
    if not value.isprintable():
        return f"holds control characters (line breaks, tabs ...): {_brief(value)}"
    return None


def _brief(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters. Containers and huge whole numbers
    are only described: their repr could be megabytes long, or fail."""
    if isinstance(value, dict):
        return f"a JSON object of {len(value):,} entries"
    if isinstance(value, (list, tuple)):
        return f"a JSON list of {len(value):,} items"
    if _is_whole(value) and value.bit_length() > 160:
        return f"a whole number of about {int(value.bit_length() * math.log10(2)):,} digits"
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + "..."
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _some(items: list, shown: int = 5) -> str:
    """The first few ``items``, briefly, then how many more: a message stays short however
    many items a crafted card holds."""
    text = ", ".join(_brief(item, 40) for item in items[:shown])
    return text + (f" and {len(items) - shown:,} more" if len(items) > shown else "")


def _check_metadata_size(props: Mapping[str, str], source: str) -> None:
    """Refuse ``lcz.*`` metadata beyond :data:`MAX_METADATA_CHARS` before parsing any of it."""
    sizes = {key: len(key) + len(value) for key, value in props.items()
             if key.startswith(PREFIX)}
    total = sum(sizes.values())
    if total > MAX_METADATA_CHARS:
        largest = max(sizes, key=sizes.get)
        raise ModelError(
            f"{source}: its LCZ metadata (the 'lcz.*' keys) holds {total:,} characters, more "
            f"than the {MAX_METADATA_CHARS:,} a model card may hold ({_brief(largest)} alone "
            f"holds {sizes[largest]:,}). {_EXPORT_HINT}")


_JSON_TOKENS = re.compile(r'[\[\]{}"\\]')


def _json_text_nests_deeper(text: str, limit: int) -> bool:
    """Whether JSON ``text`` nests lists/objects more than ``limit`` levels deep: one pass
    over its brackets and quotes, without recursion, so that nesting deeper than Python's
    recursion limit never reaches ``json.loads``."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth, in_string, escaped_at = 0, False, -1
    for token in _JSON_TOKENS.finditer(text):
        at, char = token.start(), token.group()
        if at == escaped_at:
            continue
        if char == "\\":
            escaped_at = at + 1
        elif char == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _nests_deeper(value: object, limit: int) -> bool:
    """Whether parsed JSON ``value`` nests lists/objects more than ``limit`` levels deep
    (counted without recursion; a card built in Python may nest anything)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, (dict, list)))
    return False


def _as_float(value: object) -> object:
    """A JSON whole number as a float; one too large for a float becomes infinity, which
    validation then refuses by name (instead of an OverflowError traceback)."""
    if not _is_whole(value):
        return value
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


_KIND_NAMES = {int: "a whole number", float: "a number", list: "a JSON list",
               dict: "a JSON object", str: "text"}


def _parse(props: Mapping[str, str], key: str, kind: type, source: str, default: Any = None):
    full = PREFIX + key
    if full not in props:
        if default is not None:
            return default
        raise ModelError(f"{source} lacks the metadata key '{full}'. {_EXPORT_HINT}")
    raw = props[full]
    if kind is str:
        return raw
    if _json_text_nests_deeper(raw, MAX_JSON_DEPTH):
        raise ModelError(f"{source}: metadata key '{full}' nests JSON more than "
                         f"{MAX_JSON_DEPTH} levels deep. {_EXPORT_HINT}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise ModelError(f"{source}: metadata key '{full}' is not valid JSON: {_brief(raw)}. "
                         f"{_EXPORT_HINT}") from None
    except (ValueError, RecursionError):  # a whole number of thousands of digits
        raise ModelError(f"{source}: metadata key '{full}' holds a number too long to read "
                         f"({_brief(raw)}). {_EXPORT_HINT}") from None
    if kind is float:
        value = _as_float(value)
    if kind is list and isinstance(value, list) and key in ("scale", "offset", "mean", "std"):
        value = [_as_float(v) for v in value]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ModelError(f"{source}: metadata key '{full}' should be {_KIND_NAMES[kind]}, "
                         f"got {_brief(raw)}. {_EXPORT_HINT}")
    return value
