"""LCZ training package (PyTorch): models, export to the plugin's ONNX model contract.

Imports torch, never QGIS. The plugin never imports this package: the ONNX file and its
metadata (``lcz_qgis_plugin.core.model.card``) are the only interface between the two.
Command line: ``python -m training <command>`` (see ``python -m training --help``).
"""
