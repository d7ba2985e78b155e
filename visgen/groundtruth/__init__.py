"""Closed-form ground truth (Gaussian mixtures) for testing the core, and the
distances and convergence helpers that compare samplers with it."""

from visgen.groundtruth.distances import exact_marginal_sample
from visgen.groundtruth.distances import fit_order
from visgen.groundtruth.distances import gaussian_flow_map
from visgen.groundtruth.distances import mmd_rbf
from visgen.groundtruth.distances import sliced_wasserstein
from visgen.groundtruth.gmm import GaussianMixture
from visgen.groundtruth.gmm import make_mixture

__all__ = ['GaussianMixture', 'make_mixture', 'sliced_wasserstein', 'mmd_rbf',
           'gaussian_flow_map', 'fit_order', 'exact_marginal_sample']
