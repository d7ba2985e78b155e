"""Inverse problems with a trained diffusion prior: degradation operators with
their SVDs, DDRM, and DPS / Pi-GDM as denoiser combinators, checked against
the exact posteriors of Gaussian mixtures (`exact`)."""

from visgen.inverse import operators
from visgen.inverse.common import reshaped
from visgen.inverse.ddrm import ddrm
from visgen.inverse.dps import dps
from visgen.inverse.exact import linear_gaussian_posterior
from visgen.inverse.pigdm import pigdm

__all__ = ['operators', 'ddrm', 'dps', 'pigdm', 'reshaped',
           'linear_gaussian_posterior']
