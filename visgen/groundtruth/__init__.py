"""Closed-form ground truth (Gaussian mixtures) for testing the core."""

from visgen.groundtruth.gmm import GaussianMixture
from visgen.groundtruth.gmm import make_mixture

__all__ = ['GaussianMixture', 'make_mixture']
from visgen.groundtruth.distances import mmd_rbf  # noqa: E402
from visgen.groundtruth.distances import sliced_wasserstein  # noqa: E402
