"""Learned reverse-process variance and iDDPM's hybrid loss (pure JAX).

Improved DDPM (Nichol & Dhariwal 2021) lets the network output, besides its
prediction of kind k, one more value v per entry (`learn_sigma` models
output 2C channels: [prediction, v] along the last axis). The reverse step
s < t of the DDPM grid is

  p(x_s | x_t) = N(mu(x_t, x0_hat), Sigma),
  log Sigma = f log(beta) + (1 - f) log(beta_tilde),   f = (v + 1) / 2,

where, for any ordinary path (x_t = alpha x0 + sigma eps), the forward step
x_t | x_s ~ N(a x_s, beta I), a = alpha_t / alpha_s, has
beta = sigma_t^2 - a^2 sigma_s^2 and the posterior q(x_s | x_t, x0) has
variance beta_tilde = beta sigma_s^2 / sigma_t^2 and mean
mu = a sigma_s^2 / sigma_t^2 x_t + alpha_s beta / sigma_t^2 x0 (on DDPM's
tables these are its beta_t, beta_tilde_t and posterior mean). At the first
step (s = 0) beta_tilde is 0, so, as in iDDPM, its log is clipped to the
second step's value.

L_hybrid = L_simple + lambda L_vlb (lambda = 0.001). At a training step
i in {0, ..., T - 1} of the T-step grid (t = (i + 1) / T, s = i / T),

  L_i = KL(q(x_s | x_t, x0) || p(x_s | x_t))            (i > 0),
  L_0 = -log p(x0 | x_t)   (discretized Gaussian decoder for 8-bit data),

in bits per dimension, with the mean of p computed from the *stopped*
prediction, so L_vlb trains only the variance and L_simple only the mean.
L_vlb = sum_i L_i = T E_i[L_i], so the per-example term added to the loss
is lambda T L_i (iDDPM's `vb *= num_timesteps / 1000` for lambda = 0.001).

For continuous-time paths (VP, cosine, rectified flow, ...) the grid is the
DDPM grid of `num_timesteps` steps on the path; training times are snapped to
it (the bound is a discrete-time one). Sampling with fewer steps (respacing)
recomputes beta and beta_tilde between the kept times and interpolates v
between them (`visgen.samplers.ancestral`).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from visgen.interpolants import base
from visgen.objectives import predictions

DECODERS = ('discretized', 'gaussian')


def split_output(out, channels: int):
  """(prediction, v) from a 2C-channel output along the last axis."""
  if out.shape[-1] != 2 * channels:
    raise ValueError(
        f'A learned-variance network must output 2 x {channels} channels on '
        f'the last axis ([prediction, variance]); got shape {out.shape}. '
        'Build the model with learn_sigma=True.')
  return out[..., :channels], out[..., channels:]


def step_variances(*, path: base.Path, t, s):
  """(beta, beta_tilde) of the forward / posterior step from s < t."""
  a = path.alpha(t) / path.alpha(s)
  a = jnp.where(jnp.isfinite(a), a, 0.0)
  sig_t2, sig_s2 = path.sigma(t) ** 2, path.sigma(s) ** 2
  beta = jnp.maximum(sig_t2 - a**2 * sig_s2, 0.0)
  return beta, beta * sig_s2 / sig_t2


def posterior_mean(*, x_t, x0, path: base.Path, t, s):
  """Mean of q(x_s | x_t, x0) (t, s of shape (B,) or scalars)."""
  a = path.alpha(t) / path.alpha(s)
  a = jnp.where(jnp.isfinite(a), a, 0.0)
  sig_t2, sig_s2 = path.sigma(t) ** 2, path.sigma(s) ** 2
  beta = jnp.maximum(sig_t2 - a**2 * sig_s2, 0.0)
  c_x = base.bcast(a * sig_s2 / sig_t2, x_t)
  c_0 = base.bcast(path.alpha(s) * beta / sig_t2, x_t)
  return c_x * x_t + c_0 * x0


def interpolated_log_variance(v, *, log_beta, log_beta_tilde):
  """log Sigma = f log beta + (1 - f) log beta_tilde, f = (v + 1) / 2.

  v = 1 gives beta (DDPM's upper bound), v = -1 beta_tilde (its lower one);
  as in iDDPM, v is not clipped.
  """
  f = (v + 1.0) / 2.0
  return (base.bcast(log_beta, v) * f
          + base.bcast(log_beta_tilde, v) * (1.0 - f))


def gaussian_kl(*, mean1, logvar1, mean2, logvar2):
  """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def discretized_gaussian_log_likelihood(x, *, mean, log_var, bins=255):
  """log P(x) per entry of 8-bit data in [-1, 1] under N(mean, e^log_var)
  integrated over x's bin of width 2 / bins (the end bins extend to
  -inf / +inf), as iDDPM's decoder."""
  inv_std = jnp.exp(-0.5 * log_var)
  centered = x - mean
  upper = inv_std * (centered + 1.0 / bins)
  lower = inv_std * (centered - 1.0 / bins)
  log_ndtr = jax.scipy.special.log_ndtr
  log_cdf_upper, log_sf_lower = log_ndtr(upper), log_ndtr(-lower)
  # The bin's mass Phi(u) - Phi(l), computed on the side of the mean where
  # it does not cancel: Phi(u)(1 - Phi(l) / Phi(u)) left of the mean,
  # Q(l)(1 - Q(u) / Q(l)) right of it (Q = 1 - Phi). The branch not taken
  # gets a harmless ratio, so its (discarded) gradient is not NaN; -1e-7
  # keeps 1 - ratio > 0 in float32 (it binds only for std > ~1e4).
  inner = (x >= -0.999) & (x <= 0.999)
  go_right = centered > 0

  def log_mass(log_big, log_small, taken):
    ratio = jnp.where(taken, jnp.minimum(log_small - log_big, -1e-7), -1.0)
    return log_big + jnp.log1p(-jnp.exp(ratio))

  left = log_mass(log_cdf_upper, log_ndtr(lower), inner & ~go_right)
  right = log_mass(log_sf_lower, log_ndtr(-upper), inner & go_right)
  log_p = jnp.where(x < -0.999, log_cdf_upper,
                    jnp.where(x > 0.999, log_sf_lower,
                              jnp.where(go_right, right, left)))
  # iDDPM clamps each probability at 1e-12 (a bounded loss on outliers).
  return jnp.maximum(log_p, math.log(1e-12))


def gaussian_log_likelihood(x, *, mean, log_var):
  """Elementwise log N(x; mean, e^log_var) in nats (continuous data)."""
  return -0.5 * (math.log(2 * math.pi) + log_var
                 + (x - mean) ** 2 * jnp.exp(-log_var))


def _mean_flat_bits(x):
  return jnp.mean(x.reshape(x.shape[0], -1), axis=-1) / math.log(2.0)


@dataclasses.dataclass(frozen=True)
class LearnedVariance:
  """iDDPM's learned variance: the loss term and the grid it lives on.

  Attributes:
    lambda_vlb: the weight lambda of L_vlb in L_hybrid (iDDPM: 0.001).
    num_timesteps: T of the training grid; None takes a discrete path's own
      T (ddpm_linear / ddpm_cosine) and 1000 for continuous paths.
    decoder: 'discretized' (8-bit images in [-1, 1], iDDPM) or 'gaussian'
      (continuous data: the Gaussian density itself).
  """

  lambda_vlb: float = 0.001
  num_timesteps: int | None = None
  decoder: str = 'discretized'

  def __post_init__(self):
    if self.decoder not in DECODERS:
      raise ValueError(f'Unknown decoder {self.decoder!r} for the learned '
                       f'variance: valid choices are {", ".join(DECODERS)}.')
    if self.lambda_vlb < 0:
      raise ValueError(f'lambda_vlb must be >= 0, got {self.lambda_vlb}.')

  def steps(self, path: base.Path) -> int:
    """T of the DDPM grid on `path`."""
    own = getattr(path, 'num_timesteps', None)
    if own is not None:
      if self.num_timesteps not in (None, own):
        raise ValueError(
            f'learned_variance.num_timesteps = {self.num_timesteps} differs '
            f'from the {own} steps of path {path.name!r}; drop it or set the '
            "path's num_timesteps.")
      return int(own)
    return int(self.num_timesteps or 1000)

  def snap(self, t, path: base.Path):
    """(step index i, t_i = (i + 1) / T): t snapped up to the grid."""
    n = self.steps(path)
    i = jnp.clip(jnp.ceil(jnp.asarray(t, jnp.float32) * n - 1e-4) - 1, 0,
                 n - 1).astype(jnp.int32)
    return i, self.grid_time(i, path)

  def grid_time(self, i, path: base.Path):
    n = self.steps(path)
    t = (jnp.asarray(i, jnp.float32) + 1.0) / n
    return jnp.clip(t, path.t_min, path.t_max)

  def log_variances(self, i, path: base.Path):
    """(log beta_i, clipped log beta_tilde_i) of grid step i."""
    n = self.steps(path)
    t, s = self.grid_time(i, path), jnp.asarray(i, jnp.float32) / n
    beta, beta_tilde = step_variances(path=path, t=t, s=s)
    # beta_tilde vanishes at the first step: iDDPM uses the second step's.
    i1 = jnp.maximum(i, 1)
    _, beta_tilde_1 = step_variances(path=path, t=self.grid_time(i1, path),
                                     s=jnp.asarray(i1, jnp.float32) / n)
    beta_tilde = jnp.where(i == 0, beta_tilde_1, beta_tilde)
    return jnp.log(beta), jnp.log(beta_tilde)

  def vlb_terms(self, *, pred, v, kind: str, x0, x_t, i, path: base.Path):
    """L_i per example in bits / dim (the mean of p uses `pred` as given:
    the loss passes it through stop_gradient)."""
    n = self.steps(path)
    t, s = self.grid_time(i, path), jnp.asarray(i, jnp.float32) / n
    x0_hat, _ = predictions.to_x0_eps(pred, kind=kind, x_t=x_t, t=t,
                                      path=path)
    log_beta, log_beta_tilde = self.log_variances(i, path)
    model_log_var = interpolated_log_variance(
        v, log_beta=log_beta, log_beta_tilde=log_beta_tilde)
    model_mean = posterior_mean(x_t=x_t, x0=x0_hat, path=path, t=t, s=s)
    true_mean = posterior_mean(x_t=x_t, x0=x0, path=path, t=t, s=s)
    kl = gaussian_kl(mean1=true_mean,
                     logvar1=base.bcast(log_beta_tilde, x_t),
                     mean2=model_mean, logvar2=model_log_var)
    if self.decoder == 'discretized':
      log_lik = discretized_gaussian_log_likelihood(
          x0, mean=model_mean, log_var=model_log_var)
    else:
      log_lik = gaussian_log_likelihood(x0, mean=model_mean,
                                        log_var=model_log_var)
    return jnp.where(i == 0, _mean_flat_bits(-log_lik), _mean_flat_bits(kl))


def from_config(entry) -> LearnedVariance | None:
  """`config.learned_variance` -> LearnedVariance (None / False or a dict
  with enabled=False: off; a dict of options, e.g. dict(lambda_vlb=0.001))."""
  if entry is None or entry is False:
    return None
  if isinstance(entry, LearnedVariance):
    return entry
  entry = dict(entry)
  if not entry.pop('enabled', True):
    return None
  valid = {f.name for f in dataclasses.fields(LearnedVariance)}
  bad = sorted(set(entry) - valid)
  if bad:
    raise ValueError(f'Unknown learned_variance options {bad}: valid are '
                     f'{", ".join(sorted(valid))}.')
  return LearnedVariance(**entry)
