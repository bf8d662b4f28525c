"""The model card of an ONNX file, read straight from its protobuf.

Building a stack (``lcz:buildstack``) and choosing an engine need the card before, or without,
loading the model: this reader takes ``ModelProto.metadata_props`` from the file with a few
lines of protobuf decoding, so neither onnxruntime nor the onnx package is needed, and a
multi-megabyte graph is skipped over, not parsed.

Model files are untrusted input: what is read is bounded (the ``lcz.*`` metadata together at
most :data:`~.contract.MAX_METADATA_CHARS` characters, refused before it is read), and
:func:`check_model_file`, which every engine runs first, also refuses weights kept outside
the file (ONNX external data) anywhere but in existing files in the model's own folder.
"""

from __future__ import annotations

import mmap
import os

from ..errors import ModelError
from .card import MAX_METADATA_CHARS, PREFIX, ModelCard

_METADATA_PROPS = 14  # ModelProto.metadata_props (StringStringEntryProto: key 1, value 2)
# UTF-8 takes up to 4 bytes a character: more bytes of lcz.* metadata than this are refused
MAX_METADATA_BYTES = 4 * MAX_METADATA_CHARS


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


def _not_onnx(path: str, why: str) -> ModelError:
    return ModelError(f"the model {path} is not a valid ONNX model ({why}). Export it again, "
                      f"or download it again if it was copied.")


def read_metadata_props(path: str) -> dict[str, str]:
    """``metadata_props`` of an ONNX file, reading only the top-level protobuf fields (the
    graph and its weights are skipped by seeking)."""
    props: dict[str, str] = {}
    bad = _not_onnx(path, "its protobuf structure is broken")
    size = os.path.getsize(path)
    lcz_bytes = 0
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
                if field != _METADATA_PROPS:
                    f.seek(length, 1)
                elif (name := _entry_key(f, length)) is None or name.startswith(PREFIX):
                    lcz_bytes += length  # a key that does not come first counts as LCZ's
                    if lcz_bytes > MAX_METADATA_BYTES:
                        raise _too_much_metadata(path, name, length)
                    props.update([_entry(f.read(length), bad)])
                elif length > MAX_METADATA_BYTES:  # another tool's, too large to matter
                    f.seek(length, 1)
                else:
                    props.update([_entry(f.read(length), bad)])
            else:
                raise bad
    return props


def _entry_key(f, length: int) -> str | None:
    """The key (its first 100 characters) of the metadata entry of ``length`` bytes at
    ``f``'s position, or None when the key does not come first; ``f`` is left where it
    was. Tells LCZ metadata from another tool's without reading the value."""
    start = f.tell()
    head = f.read(min(length, 512))
    f.seek(start)
    if head[:1] != b"\x0a":  # field 1 (the key), length-delimited
        return None
    key_length, position = _varint_at(head, 1, len(head))
    if key_length < 0:
        return None
    return head[position:position + min(key_length, 100)].decode("utf-8", errors="replace")


def _varint_at(data, position: int, end: int) -> tuple[int, int]:
    """The varint at ``position`` of ``data`` (bytes or a memory map) and the position after
    it; ``(-1, end)`` when it is broken or runs past ``end``."""
    value = shift = 0
    while position < end and shift <= 63:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
    return -1, end


def _too_much_metadata(path: str, name: str | None, length: int) -> ModelError:
    largest = f"; {name!r} alone holds {length / 1e6:.1f} MB" if name and length > 1e5 else ""
    return ModelError(
        f"the model {path} carries more than {MAX_METADATA_BYTES / 1e6:g} MB of LCZ metadata "
        f"(its 'lcz.*' keys{largest}), far more than a model card holds (at most "
        f"{MAX_METADATA_CHARS:,} characters), so it is refused unread. Export the model again "
        f"with 'python -m training export', or use a model from a source you trust.")


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


def check_model_file(path: str) -> ModelCard:
    """The card of the model at ``path``, after checking what every engine would otherwise
    trip over, or be misled by: the file is an ONNX protobuf, its card is within bounds, and
    any weights it keeps in other files (ONNX external data) are files in its own folder.
    A model file must never make the plugin read files elsewhere."""
    card = read_model_card(path)
    folder = os.path.dirname(os.path.realpath(path))
    for location in external_data_locations(path):
        _check_external_data(path, folder, location)
    return card


def _check_external_data(path: str, folder: str, location: str) -> None:
    shown = repr(location[:80]) + ("..." if len(location) > 80 else "")
    try:
        target = os.path.realpath(os.path.join(folder, location))
        inside = (not os.path.isabs(location)
                  and os.path.commonpath([folder, target]) == folder and target != folder)
    except ValueError:  # another drive (Windows), a NUL character
        target, inside = "", False
    if not inside:
        raise ModelError(
            f"the model {path} keeps weights in {shown}, outside its own folder (ONNX external "
            f"data); a model file may only refer to files next to it, so it is refused. Use "
            f"the model as exported by 'python -m training export' (one file), or save it "
            f"with its weight files in its folder.")
    if not os.path.isfile(target):
        raise ModelError(
            f"the model {path} keeps weights in {shown}, which is not a file in {folder}. "
            f"Copy the model's weight files next to it, or export it again as one file "
            f"('python -m training export').")


# Where tensors sit in an ONNX protobuf: (message, field number) -> the field's message.
_MODEL, _GRAPH, _NODE, _ATTRIBUTE, _TENSOR, _SPARSE, _FUNCTION, _TRAINING = range(8)
_NESTED = {
    (_MODEL, 7): _GRAPH, (_MODEL, 20): _TRAINING, (_MODEL, 25): _FUNCTION,
    (_TRAINING, 1): _GRAPH, (_TRAINING, 2): _GRAPH,
    (_GRAPH, 1): _NODE, (_GRAPH, 5): _TENSOR, (_GRAPH, 15): _SPARSE,
    (_FUNCTION, 7): _NODE, (_NODE, 5): _ATTRIBUTE,
    (_ATTRIBUTE, 5): _TENSOR, (_ATTRIBUTE, 6): _GRAPH, (_ATTRIBUTE, 10): _TENSOR,
    (_ATTRIBUTE, 11): _GRAPH, (_ATTRIBUTE, 22): _SPARSE, (_ATTRIBUTE, 23): _SPARSE,
    (_SPARSE, 1): _TENSOR, (_SPARSE, 2): _TENSOR,
}
_EXTERNAL_DATA = 13  # TensorProto.external_data (StringStringEntryProto)
_MAX_EXTERNAL_ENTRY = 65536


def external_data_locations(path: str) -> list[str]:
    """The ``location`` of every tensor kept outside the ONNX file at ``path`` (external
    data), found by walking the graph's structure (nodes, attributes, initializers,
    subgraphs, functions) without recursion; weights are skipped, not read."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return []
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _walk_tensors(data, size, _not_onnx(path, "its graph's structure is broken"))


def _walk_tensors(data, size: int, bad: Exception) -> list[str]:
    locations, todo = [], [(0, size, _MODEL)]
    while todo:
        position, end, kind = todo.pop()
        while position < end:
            key, position = _varint_at(data, position, end)
            field, wire = key >> 3, key & 7
            if key < 0 or field == 0:
                raise bad
            if wire == 0:
                value, position = _varint_at(data, position, end)
                if value < 0:
                    raise bad
            elif wire in (1, 5):
                position += 8 if wire == 1 else 4
            elif wire == 2:
                length, position = _varint_at(data, position, end)
                if length < 0 or position + length > end:
                    raise bad
                nested = _NESTED.get((kind, field))
                if nested is not None:
                    todo.append((position, position + length, nested))
                elif kind == _TENSOR and field == _EXTERNAL_DATA:
                    if length > _MAX_EXTERNAL_ENTRY:
                        raise bad
                    name, value = _entry(data[position:position + length], bad)
                    if name == "location":
                        locations.append(value)
                position += length
            else:
                raise bad
        if position > end:
            raise bad
    return locations
