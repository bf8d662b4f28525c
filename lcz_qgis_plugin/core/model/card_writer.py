"""Write the model contract into an ONNX file (the training side of the contract).

Uses the ``onnx`` package, which the training environment has; the plugin itself never
imports this module at run time. Keys and validation come from :mod:`.contract`, so a file
written here is exactly what the plugin's reader accepts.
"""

from __future__ import annotations

import os

from ..commit import Commit
from ..errors import ModelError
from .card import PREFIX, ModelCard


def write_model_card(model: onnx.ModelProto | str | os.PathLike,  # noqa: F821
                     card: ModelCard, output_path: str | os.PathLike | None = None):
    """Attach ``card`` to ``model`` (a ModelProto or an .onnx path) and return the ModelProto.

    Existing ``lcz.*`` entries are replaced, other metadata is kept. The graph's input and
    output shapes are checked against the card where they are static. When ``output_path`` is
    given the model is saved there.
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model))
    check_graph_matches_card(model, card)
    props = card.to_metadata_props()
    kept = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    for key, value in kept + sorted(props.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    if output_path is not None:
        onnx.save(model, os.fspath(output_path))
    return model


def copy_with_card(model: str | os.PathLike, card: ModelCard,
                   output_path: str | os.PathLike) -> str:
    """Write ``model`` with ``card`` to ``output_path`` (may be ``model`` itself) through a
    temporary file, so that a failure leaves neither a half-written model nor a changed one."""
    output_path = os.fspath(output_path)
    with Commit() as files:  # the model may be its own output: replaced atomically
        files.save_with(output_path, lambda temp: write_model_card(
            model, card, temp), "model")
    return output_path


def check_graph_matches_card(model, card: ModelCard) -> None:
    """Raise :class:`ModelError` when a static graph dimension contradicts the card."""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or not graph.output:
        raise ModelError(f"an LCZ model needs exactly one input and at least one output; "
                         f"this graph has {len(inputs)} inputs and {len(graph.output)} outputs")

    def dims(value_info):
        return [d.dim_value if d.HasField("dim_value") else None
                for d in value_info.type.tensor_type.shape.dim]

    problem = card.shape_mismatch(dims(inputs[0]), dims(graph.output[0]))
    if problem:
        raise ModelError(f"model {problem}")
