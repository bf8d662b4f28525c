"""The model card: what an ONNX model file says about itself, read, checked and written here (the
one contract between the training package and the plugin)."""
