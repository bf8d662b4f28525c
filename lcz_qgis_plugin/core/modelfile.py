"""The model card of an ONNX file, read straight from its protobuf.

Building a stack (``lcz:buildstack``) and choosing an engine need the card before, or without,
loading the model: this reader takes ``ModelProto.metadata_props`` from the file with a few
lines of protobuf decoding, so neither onnxruntime nor the onnx package is needed, and a
multi-megabyte graph is skipped over, not parsed.
"""

from __future__ import annotations

import os

from .contract import ModelCard
from .errors import ModelError

_METADATA_PROPS = 14  # ModelProto.metadata_props (StringStringEntryProto: key 1, value 2)


def _varint(read) -> int | None:
    shift, value = 0, 0
    while True:
        byte = read(1)
        if not byte:
            return None if shift == 0 else -1
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            return -1


def read_metadata_props(path: str) -> dict[str, str]:
    """``metadata_props`` of an ONNX file, reading only the top-level protobuf fields (the
    graph and its weights are skipped by seeking)."""
    props: dict[str, str] = {}
    bad = ModelError(f"the model {path} is not a valid ONNX model (its protobuf structure is "
                     f"broken). Export it again, or download it again if it was copied.")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        while True:
            key = _varint(f.read)
            if key is None:
                break
            if key < 0:
                raise bad
            field, wire = key >> 3, key & 7
            if wire == 0:
                if _varint(f.read) in (None, -1):
                    raise bad
            elif wire == 1:
                f.seek(8, 1)
            elif wire == 5:
                f.seek(4, 1)
            elif wire == 2:
                length = _varint(f.read)
                if length is None or length < 0 or f.tell() + length > size:
                    raise bad
                if field == _METADATA_PROPS:
                    entry = f.read(length)
                    props.update([_entry(entry, bad)])
                else:
                    f.seek(length, 1)
            else:
                raise bad
    return props


def _entry(data: bytes, bad: Exception) -> tuple[str, str]:
    values = {1: "", 2: ""}
    position = 0

    def read(n):
        nonlocal position
        chunk = data[position:position + n]
        position += n
        return chunk

    while position < len(data):
        key = _varint(read)
        if key is None or key < 0 or key & 7 != 2:
            raise bad
        length = _varint(read)
        if length is None or length < 0:
            raise bad
        values[key >> 3] = read(length).decode("utf-8", errors="replace")
    return values[1], values[2]


def read_model_card(path: str) -> ModelCard:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelError(f"the model file {path} does not exist. Choose an .onnx model "
                         f"exported by 'python -m training export'.")
    return ModelCard.from_metadata_props(read_metadata_props(path), source=f"the model {path}")
