"""The QGIS-free core of the LCZ plugin: numpy, GDAL and onnxruntime only.

Everything that reads rasters, runs models and writes maps lives here, so that it can be
tested and scripted without QGIS; the Processing algorithms in ``lcz_qgis_plugin.algorithms``
only translate parameters and feedback. The folders follow the data path:

``preprocess/``     downloads -> a model input stack on one grid
``training_data/``  input stack + training areas -> patch file
``model/``          the model card (the contract with the training package)
``inference/``      input stack + model -> LCZ map
``assessment/``     map + reference -> scores and report

and the modules directly in ``core/`` are what every stage shares (LCZ classes, errors,
feedback, outputs, rasters, input stacks, the cell grid, labelled areas).

The functions a script needs are importable from here (loaded on first use, so importing
this package stays cheap)::

    from lcz_qgis_plugin.core import classify
    result = classify(["stack.tif"], "model.onnx", "lcz.tif")
"""

from importlib import import_module

_PUBLIC = {
    "stack_sentinel2": "preprocess.sentinel2",
    "rasterize_osm": "preprocess.osm",
    "prepare_dsm": "preprocess.dsm",
    "build_stack": "preprocess.buildstack",
    "extract_patches": "training_data.extraction",
    "classify": "inference.classify",
    "Engine": "inference.engine",
    "assess_accuracy": "assessment.accuracy",
    "write_quicklook": "assessment.quicklook",
    "ModelCard": "model.card",
    "read_model_card": "model.card_file",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
