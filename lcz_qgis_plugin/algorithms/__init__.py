"""The Processing algorithms of the ``lcz`` provider."""


def all_algorithms():
    from .classify import ClassifyAlgorithm
    return [ClassifyAlgorithm()]
