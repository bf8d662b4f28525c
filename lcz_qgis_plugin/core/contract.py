"""The model contract: what an LCZ model's ONNX file says about itself (schema version 1).

The ONNX file is the one interface between the training package and the plugin. Besides a
float32 input ``N x C x H x W`` and an output ``N x K`` (K = number of classes), the file's
``metadata_props`` carry the keys below. Values are JSON, except plain strings, which are
stored as they are so that tools such as Netron show them readably.

======================  ==========================================================
key                     meaning
======================  ==========================================================
lcz.schema_version      ``1``
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
lcz.temperature         calibration temperature T (> 0); probabilities = softmax(z / T),
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
                        used).
======================  ==========================================================

This module only *reads and validates* (the plugin side); writing the keys into an ONNX file
is :mod:`lcz_qgis_plugin.core.contract_writer` (the training side), which uses
:meth:`ModelCard.to_metadata_props` from here so that both sides share one definition.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ModelError
from .lcz_classes import LCZ_CODES, lcz_class

SCHEMA_VERSION = 1
PREFIX = "lcz."
OUTPUT_KINDS = ("logits", "probabilities")
# A reduced-precision engine may run automatically when it gave float32's class on at least
# this share of at least this many real patches. The bar for "the same map" is 99 %
# of cells; the margin covers a scene that differs from the patches the check used.
SAME_CLASS_REQUIRED = 0.995
PATCHES_REQUIRED = 200

_EXPORT_HINT = ("Export the model with 'python -m training export', or add the metadata with "
                "lcz_qgis_plugin.core.contract_writer.write_model_card().")


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
    schema_version: int = SCHEMA_VERSION

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def n_classes(self) -> int:
        return len(self.class_codes)

    def describe(self) -> str:
        return (f"{self.name} {self.version} ({self.n_channels} channels, "
                f"{self.patch_size}x{self.patch_size} px at {self.pixel_size:g} m, "
                f"{self.n_classes} classes)")

    def passes_precision_check(self, precision: str) -> bool:
        """Whether ``precision`` (e.g. ``bfloat16``) was measured to give float32's class on
        enough real patches for the automatic device to use it."""
        check = self.precision_checks.get(precision)
        return bool(check) and (check["same_class"] >= SAME_CLASS_REQUIRED
                                and check["patches"] >= PATCHES_REQUIRED)

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
        return {PREFIX + key: (value if isinstance(value, str) else json.dumps(value))
                for key, value in values.items()}

    @classmethod
    def from_metadata_props(cls, props: Mapping[str, str],
                            source: str = "the model") -> "ModelCard":
        """Parse and validate ``metadata_props``; raises :class:`ModelError` naming the problem."""
        if PREFIX + "schema_version" not in props:
            raise ModelError(
                f"{source} carries no LCZ model metadata (no '{PREFIX}schema_version' in its "
                f"ONNX metadata_props), so the plugin cannot tell which bands it expects or how "
                f"to scale them. {_EXPORT_HINT}")
        version = _parse(props, "schema_version", int, source)
        if version > SCHEMA_VERSION:
            raise ModelError(
                f"{source} uses model metadata schema {version}, but this plugin understands "
                f"schema {SCHEMA_VERSION} at most. Update the LCZ plugin.")
        if version < 1:
            raise ModelError(f"{source}: invalid metadata schema version {version}.")
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
        )
        card.validate(source)
        return card

    # -- validation ------------------------------------------------------------------------
    def validate(self, source: str = "the model") -> None:
        """Raise :class:`ModelError` if the card is inconsistent."""
        def bad(msg: str) -> ModelError:
            return ModelError(f"{source} has invalid LCZ model metadata: {msg}. {_EXPORT_HINT}")

        if not isinstance(self.name, str) or not self.name.strip():
            raise bad("'lcz.name' is empty")
        if not self.channels or not all(isinstance(c, str) and c.strip() for c in self.channels):
            raise bad("'lcz.channels' must be a non-empty list of channel names")
        dupes = sorted({c for c in self.channels if self.channels.count(c) > 1})
        if dupes:
            raise bad(f"'lcz.channels' names {', '.join(dupes)} more than once")
        n = len(self.channels)
        for key in ("scale", "offset", "mean", "std"):
            values = getattr(self, key)
            if not isinstance(values, list) or len(values) != n:
                raise bad(f"'lcz.{key}' must hold one number per channel ({n})")
            if not all(_is_finite_number(v) for v in values):
                raise bad(f"'lcz.{key}' holds a value that is not a finite number")
        if any(v <= 0 for v in self.std):
            raise bad("'lcz.std' must be positive for every channel")
        if any(v == 0 for v in self.scale):
            raise bad("'lcz.scale' must not be zero")
        if not isinstance(self.patch_size, int) or self.patch_size < 1:
            raise bad("'lcz.patch_size' must be a positive integer")
        for key in ("pixel_size", "cell_size", "temperature"):
            value = getattr(self, key)
            if not _is_finite_number(value) or value <= 0:
                raise bad(f"'lcz.{key}' must be a positive number")
        codes = self.class_codes
        if (not isinstance(codes, list) or not codes
                or not all(isinstance(c, int) and not isinstance(c, bool) for c in codes)):
            raise bad("'lcz.class_codes' must be a non-empty list of LCZ codes 1-17")
        unknown = [c for c in codes if c not in LCZ_CODES]
        if unknown:
            raise bad(f"'lcz.class_codes' holds {unknown}, not LCZ codes 1-17")
        if len(set(codes)) != len(codes):
            raise bad("'lcz.class_codes' lists a class twice")
        if len(codes) < 2:
            raise bad("'lcz.class_codes' must list at least two classes")
        if self.output_kind not in OUTPUT_KINDS:
            raise bad(f"'lcz.output_kind' is {self.output_kind!r}; expected one of {OUTPUT_KINDS}")
        if not isinstance(self.provenance, dict):
            raise bad("'lcz.provenance' must be a JSON object")
        if not isinstance(self.precision_checks, dict):
            raise bad("'lcz.precision_checks' must be a JSON object")
        for precision, check in self.precision_checks.items():
            if not (isinstance(check, dict) and _is_finite_number(check.get("same_class"))
                    and 0 <= check["same_class"] <= 1
                    and isinstance(check.get("patches"), int)
                    and not isinstance(check["patches"], bool) and check["patches"] >= 1):
                raise bad(f"'lcz.precision_checks' entry {precision!r} needs 'same_class' "
                          f"(a share 0-1) and 'patches' (a count of at least 1)")
            if precision == "int8" and not _is_variant(check):
                raise bad("'lcz.precision_checks' entry 'int8' needs 'file' (the int8 model's "
                          "file name, beside this model) and 'sha256' (its SHA-256 in hex)")


def _is_variant(check: dict) -> bool:
    name, digest = check.get("file"), check.get("sha256")
    return (isinstance(name, str) and name.endswith(".onnx") and name == name.strip()
            and "/" not in name and "\\" not in name and name not in (".", "..")
            and isinstance(digest, str) and len(digest) == 64
            and all(c in "0123456789abcdef" for c in digest))


def _is_finite_number(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


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
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise ModelError(f"{source}: metadata key '{full}' is not valid JSON: {raw[:80]!r}. "
                         f"{_EXPORT_HINT}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is list and isinstance(value, list):
        value = [float(v) if isinstance(v, int) and not isinstance(v, bool)
                 and key in ("scale", "offset", "mean", "std") else v for v in value]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ModelError(f"{source}: metadata key '{full}' should be {_KIND_NAMES[kind]}, "
                         f"got {raw[:80]!r}. {_EXPORT_HINT}")
    return value
