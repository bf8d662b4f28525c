"""The Processing algorithms of the ``lcz`` provider."""


def all_algorithms():
    from .classify import ClassifyAlgorithm
    from .stacksentinel2 import StackSentinel2Algorithm
    from .rasterizeosm import RasterizeOsmAlgorithm
    from .preparedsm import PrepareDsmAlgorithm
    from .buildstack import BuildStackAlgorithm
    return [ClassifyAlgorithm(), StackSentinel2Algorithm(), RasterizeOsmAlgorithm(),
            PrepareDsmAlgorithm(), BuildStackAlgorithm()]
