"""Axes (B)-(D) and the unified loss: prediction kinds and their exact
conversions, weightings, time distributions; the network's input
preconditioning (`precond`) and iDDPM's learned variance
(`learned_variance`)."""

from visgen.objectives import learned_variance
from visgen.objectives import precond
from visgen.objectives import predictions
from visgen.objectives.loss import exact_loss_grid
from visgen.objectives.loss import unified_loss
from visgen.objectives.time_dists import TIME_DISTS
from visgen.objectives.time_dists import get_time_dist
from visgen.objectives.weightings import WEIGHTINGS
from visgen.objectives.weightings import get_weighting

__all__ = ['learned_variance', 'precond', 'predictions', 'unified_loss',
           'exact_loss_grid', 'get_time_dist', 'get_weighting', 'TIME_DISTS',
           'WEIGHTINGS']
