"""A float16 copy of an LCZ model, for GPUs (DEVICE ``cuda-fp16``).

Tensor cores run float16 several times faster than float32, and the activations take half the
memory, so batches can be larger. The copy keeps the model contract's float32 input and output:
the graph casts the batch to float16 after the input and the logits back to float32 before
the output, on the device. Weights (initializers and Constant nodes) are rounded to float16;
Cast nodes that produced float32 produce float16. The copy lives in memory only.

Needs the ``onnx`` package (the model is rewritten as a protobuf); without it DEVICE ``cuda``
runs the float32 model.
"""

from __future__ import annotations

import numpy as np

from ..errors import EngineError, ModelError
from ..model.card_file import check_model_file


def float16_model_bytes(path: str) -> bytes:
    """The serialized float16 copy of the ONNX model at ``path``.

    The file is checked first (:func:`~.modelfile.check_model_file`: an ONNX protobuf, a
    card within bounds, external data only in its own folder), and whatever the onnx package
    raises on a damaged file becomes a :class:`ModelError` naming it: onnx would otherwise
    read weight files wherever the model points, and raise protobuf's DecodeError."""
    try:
        import onnx
    except ImportError:
        raise EngineError("DEVICE CUDA float16 needs the onnx package to convert the model "
                          "('python3 -m pip install onnx' in QGIS's Python); or set DEVICE to "
                          "CUDA to run the model in float32.") from None
    check_model_file(path)
    try:
        return to_float16(onnx.load(path)).SerializeToString()
    except Exception as exc:  # protobuf's DecodeError, onnx's ValidationError, numpy's errors
        raise ModelError(
            f"cannot convert the model {path} to float16: it is not a valid ONNX model "
            f"({type(exc).__name__}: {str(exc).strip()[:300]}). Export it again, or download "
            f"it again if it was copied.") from None


def to_float16(model):
    """Rewrite an ``onnx.ModelProto`` in place so it computes in float16; returns it."""
    from onnx import TensorProto, helper, numpy_helper

    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
    graph = model.graph

    def half(tensor):
        if tensor.data_type == FLOAT:
            values = numpy_helper.to_array(tensor)
            finite = np.clip(values, -65504.0, 65504.0)  # float16's range
            tensor.CopyFrom(numpy_helper.from_array(finite.astype(np.float16), tensor.name))

    for tensor in graph.initializer:
        half(tensor)
    for node in graph.node:
        for attribute in node.attribute:
            if node.op_type == "Constant" and attribute.name == "value":
                half(attribute.t)
            elif node.op_type == "Cast" and attribute.name == "to" and attribute.i == FLOAT:
                attribute.i = HALF
    del graph.value_info[:]  # float32 intermediate types would now be wrong
    casts_in, casts_out = [], []
    for value in graph.input:
        if value.type.tensor_type.elem_type != FLOAT:
            continue
        inside = value.name + "_fp16"
        for node in graph.node:
            node.input[:] = [inside if name == value.name else name for name in node.input]
        casts_in.append(helper.make_node("Cast", [value.name], [inside], to=HALF,
                                         name=f"{value.name}_to_fp16"))
    for value in graph.output:
        if value.type.tensor_type.elem_type != FLOAT:
            continue
        inside = value.name + "_fp16"
        for node in graph.node:
            node.output[:] = [inside if name == value.name else name for name in node.output]
            node.input[:] = [inside if name == value.name else name for name in node.input]
        casts_out.append(helper.make_node("Cast", [inside], [value.name], to=FLOAT,
                                          name=f"{value.name}_to_fp32"))
    nodes = casts_in + list(graph.node) + casts_out
    del graph.node[:]
    graph.node.extend(nodes)
    return model
