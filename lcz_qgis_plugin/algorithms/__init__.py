"""The Processing algorithms of the ``lcz`` provider, in the order of the LCZ workflow."""


def all_algorithms():
    from .assessaccuracy import AssessAccuracyAlgorithm
    from .buildstack import BuildStackAlgorithm
    from .checkenvironment import CheckEnvironmentAlgorithm
    from .classify import ClassifyAlgorithm
    from .extractpatches import ExtractPatchesAlgorithm
    from .installdependencies import InstallDependenciesAlgorithm
    from .preparedsm import PrepareDsmAlgorithm
    from .rasterizeosm import RasterizeOsmAlgorithm
    from .stacksentinel2 import StackSentinel2Algorithm
    return [StackSentinel2Algorithm(), RasterizeOsmAlgorithm(), PrepareDsmAlgorithm(),
            BuildStackAlgorithm(), ExtractPatchesAlgorithm(), ClassifyAlgorithm(),
            AssessAccuracyAlgorithm(), CheckEnvironmentAlgorithm(),
            InstallDependenciesAlgorithm()]
