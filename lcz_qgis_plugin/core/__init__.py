"""The QGIS-free core of the LCZ plugin: numpy, GDAL and onnxruntime only.

Everything that reads rasters, runs models and writes maps lives here, so that it can be
tested and scripted without QGIS. The Processing algorithms in ``lcz_qgis_plugin.algorithms``
only translate parameters and feedback. Typical use from Python::

    from lcz_qgis_plugin.core.classify import classify
    result = classify(["stack.tif"], "model.onnx", "lcz.tif")
"""
