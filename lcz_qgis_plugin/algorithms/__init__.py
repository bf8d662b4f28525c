"""The Processing algorithms of the ``lcz`` provider."""


def all_algorithms():
    from .assess_accuracy import AssessAccuracyAlgorithm
    from .classify import ClassifyAlgorithm
    from .extract_patches import ExtractPatchesAlgorithm
    return [ClassifyAlgorithm(), ExtractPatchesAlgorithm(), AssessAccuracyAlgorithm()]
