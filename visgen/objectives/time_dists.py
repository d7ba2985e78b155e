"""Axis (D): the distribution p(t) of training times.

`dist.sample(key, n, path=..., state=None)` returns `(t_n, correction_n)`.
The correction multiplies each example's loss: it is 1 for distributions that
*define* the objective (logit-normal, EDM's log-normal, ...) and
`p_uniform(t) / p(t)` for the importance sampler, whose purpose is a
lower-variance estimate of the uniform-time objective.

Stateful samplers (ADM's loss-second-moment sampler) keep their state outside
(`init_state()` / `update(state, t, losses)`), so training stays pure.
"""

import abc
import dataclasses
import math

import jax
import jax.numpy as jnp

from visgen import registry

TIME_DISTS = registry.Registry('time distribution')


def _bounds(path, eps):
  lo = max(path.t_min, eps) if path is not None else eps
  hi = path.t_max if path is not None else 1.0
  return lo, hi


@dataclasses.dataclass(frozen=True)
class TimeDist(abc.ABC):
  stateful = False

  @abc.abstractmethod
  def sample(self, key, n, *, path=None, state=None):
    """(t_n, correction_n)."""


@TIME_DISTS.register('uniform')
@dataclasses.dataclass(frozen=True)
class Uniform(TimeDist):
  """t ~ U[max(eps, t_min), t_max] (Score-SDE uses eps = 1e-5 or 1e-3)."""

  eps: float = 1e-5

  def sample(self, key, n, *, path=None, state=None):
    lo, hi = _bounds(path, self.eps)
    t = jax.random.uniform(key, (n,), minval=lo, maxval=hi)
    return t, jnp.ones((n,))


@TIME_DISTS.register('discrete')
@dataclasses.dataclass(frozen=True)
class Discrete(TimeDist):
  """DDPM's uniform discrete steps: t = (i + 1) / T, i ~ U{0, ..., T - 1}.

  T defaults to the path's own number of steps (ddpm_linear / ddpm_cosine
  with any num_timesteps), else 1000.
  """

  num_timesteps: int | None = None

  def sample(self, key, n, *, path=None, state=None):
    steps = self.num_timesteps or getattr(path, 'num_timesteps', None) or 1000
    i = jax.random.randint(key, (n,), 0, steps)
    return (i + 1) / steps, jnp.ones((n,))


@TIME_DISTS.register('stratified')
@dataclasses.dataclass(frozen=True)
class Stratified(TimeDist):
  """VDM's low-discrepancy sampler: one shared offset, n evenly spaced times.

  Each t_i is marginally uniform, so the estimate is unbiased, with much lower
  variance than i.i.d. times.
  """

  eps: float = 1e-5

  def sample(self, key, n, *, path=None, state=None):
    lo, hi = _bounds(path, self.eps)
    u0 = jax.random.uniform(key, ())
    u = jnp.mod(u0 + jnp.arange(n) / n, 1.0)
    return lo + (hi - lo) * u, jnp.ones((n,))


@TIME_DISTS.register('logit_normal')
@dataclasses.dataclass(frozen=True)
class LogitNormal(TimeDist):
  """SD3 / SiT-style t = sigmoid(m + s z), z ~ N(0, 1)."""

  mean: float = 0.0
  std: float = 1.0
  eps: float = 1e-5

  def sample(self, key, n, *, path=None, state=None):
    lo, hi = _bounds(path, self.eps)
    t = jax.nn.sigmoid(self.mean + self.std * jax.random.normal(key, (n,)))
    return jnp.clip(t, lo, hi), jnp.ones((n,))


@TIME_DISTS.register('lognormal_sigma')
@dataclasses.dataclass(frozen=True)
class LogNormalSigma(TimeDist):
  """EDM: ln(sigma / alpha) ~ N(P_mean, P_std^2), mapped to t by the path."""

  p_mean: float = -1.2
  p_std: float = 1.2
  eps: float = 0.0

  def sample(self, key, n, *, path=None, state=None):
    if path is None:
      raise ValueError('lognormal_sigma needs the path to map sigma to t.')
    lo, hi = _bounds(path, self.eps)
    log_s = self.p_mean + self.p_std * jax.random.normal(key, (n,))
    t = path.t_from_logsnr(-2.0 * log_s)
    return jnp.clip(t, lo, hi), jnp.ones((n,))


@TIME_DISTS.register('mode')
@dataclasses.dataclass(frozen=True)
class Mode(TimeDist):
  """SD3's mode sampling: t = 1 - u - s (cos^2(pi u / 2) - 1 + u)."""

  scale: float = 1.29
  eps: float = 1e-5

  def sample(self, key, n, *, path=None, state=None):
    lo, hi = _bounds(path, self.eps)
    u = jax.random.uniform(key, (n,))
    t = 1 - u - self.scale * (jnp.cos(math.pi * u / 2) ** 2 - 1 + u)
    return jnp.clip(t, lo, hi), jnp.ones((n,))


@TIME_DISTS.register('cosmap')
@dataclasses.dataclass(frozen=True)
class CosMap(TimeDist):
  """SD3's CosMap: t = 1 - 1 / (tan(pi u / 2) + 1)."""

  eps: float = 1e-5

  def sample(self, key, n, *, path=None, state=None):
    lo, hi = _bounds(path, self.eps)
    u = jax.random.uniform(key, (n,))
    t = 1 - 1 / (jnp.tan(math.pi * u / 2) + 1)
    return jnp.clip(t, lo, hi), jnp.ones((n,))


@TIME_DISTS.register('importance')
@dataclasses.dataclass(frozen=True)
class LossSecondMoment(TimeDist):
  """ADM's LossSecondMomentResampler over T discrete steps.

  p(i) is proportional to sqrt(E[L_i^2]) over the last `history` losses of
  step i, mixed with `uniform_prob` of the uniform distribution; until every
  step has a full history, p is uniform. Samples carry the correction
  1 / (T p(i)), so the weighted loss is unbiased for the uniform objective.
  """

  num_timesteps: int = 1000
  history: int = 10
  uniform_prob: float = 0.001
  stateful = True

  def init_state(self):
    return dict(
        losses=jnp.zeros((self.num_timesteps, self.history), jnp.float32),
        counts=jnp.zeros((self.num_timesteps,), jnp.int32))

  def probs(self, state):
    if state is None:
      return jnp.full((self.num_timesteps,), 1.0 / self.num_timesteps)
    w = jnp.sqrt(jnp.mean(state['losses'] ** 2, axis=-1))
    w = w / jnp.sum(w)
    w = w * (1 - self.uniform_prob) + self.uniform_prob / self.num_timesteps
    warm = jnp.all(state['counts'] >= self.history)
    return jnp.where(warm, w, 1.0 / self.num_timesteps)

  def sample(self, key, n, *, path=None, state=None):
    p = self.probs(state)
    i = jax.random.choice(key, self.num_timesteps, (n,), p=p)
    return (i + 1) / self.num_timesteps, 1.0 / (self.num_timesteps * p[i])

  def update(self, state, t, losses):
    """Pushes each example's (uncorrected) loss into its step's history."""
    i = jnp.clip(jnp.round(t * self.num_timesteps).astype(jnp.int32) - 1, 0,
                 self.num_timesteps - 1)

    def push(carry, item):
      buf, cnt = carry
      idx, loss = item
      row = jnp.concatenate([buf[idx, 1:], loss[None]])
      return (buf.at[idx].set(row), cnt.at[idx].add(1)), None

    (buf, cnt), _ = jax.lax.scan(push, (state['losses'], state['counts']),
                                 (i, losses.astype(jnp.float32)))
    return dict(losses=buf, counts=cnt)


def get_time_dist(name, **kwargs) -> TimeDist:
  """Builds the time distribution `name` (an instance passes through)."""
  if isinstance(name, TimeDist):
    return name
  return TIME_DISTS.build(name, **kwargs)
