"""Training a noise-aware classifier p_phi(y | x_t, t) (ADM's classifier).

Batch -> x0 (uint8 images mapped to [-1, 1] like the generation task, or
float latents times `latent_scale`) and labels. Each example gets its own
time t from the config's time distribution and x_t = alpha(t) x0 + sigma(t)
eps from the config's path -- the path of the diffusion model it will guide
-- and the loss is the cross-entropy of the classifier's logits at (x_t, t).
With `task.clean=True`, x_t = x0 at t = t_min: an ordinary discriminative
classifier trained by the same loop (the baseline of the diffusion-classifier
experiment).

  python -m visgen.main --config=configs/digits_noisy_classifier.py \
      --workdir=/tmp/nc

The model is `visgen.models.classifier.NoisyClassifier`
(config.model.name = 'noisy_classifier'). Its sample grid shows what the
classifier's gradient alone draws from an N(0, I) data model (the loop's
guidance value is the classifier scale); to generate, guide a diffusion model
with it: `GenerationTask.sample(..., classifier=task.guide(params))`.
"""

import dataclasses
from typing import Any
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from visgen import config_lib
from visgen import interpolants
from visgen import media as media_lib
from visgen import samplers
from visgen.classification import noisy_classifier
from visgen.interpolants import base as path_base
from visgen.objectives import predictions
from visgen.objectives import time_dists
from visgen.samplers import guidance as guidance_lib
from visgen.tasks import autoencoder as ae_task
from visgen.tasks import base
from visgen.tasks import generation


@dataclasses.dataclass(frozen=True)
class ClassifierGuide:
  """What a generator needs to be guided by this classifier: the
  log-probability `(x_t, t, cond) -> log p(cond['label'] | x_t, t)` and the
  path its x_t come from (which must be the generator's)."""

  log_prob: Callable[..., jax.Array]
  path: Any


class NoisyClassifierTask:
  """Cross-entropy of p_phi(y | x_t, t) on x_t of the config's path."""

  def __init__(self, config, *, apply=None, frozen_apply=None):
    self.apply = apply
    self.frozen_apply = dict(frozen_apply or {})
    t = config.task
    self.num_classes = int(t.num_classes)
    if self.num_classes < 2:
      raise ValueError('task.num_classes must be >= 2 for a classifier, got '
                       f'{self.num_classes}.')
    self.flatten = bool(t.get('flatten', False))
    self.data_key = t.get('data_key', 'image')
    self.latent_scale = float(t.get('latent_scale', 1.0))
    self.x_shape = tuple(t.x_shape)
    self.clean = bool(t.get('clean', False))
    # Latent classifiers (config.task.latent, as the generation task): a
    # frozen autoencoder encodes the image batches, so the classifier reads
    # x_t in the latent space of the generator it guides.
    self.codec = ae_task.codec_from_config(config, self.frozen_apply)
    self.batch_keys = (self.data_key, 'label')
    name, kw = config_lib.named(config.path)
    self.path = interpolants.get_path(name, **kw)
    name, kw = config_lib.named(config.get('time_dist', 'uniform'))
    self.time_dist = time_dists.get_time_dist(name, **kw)
    sampler = dict(config.get('sampler', {}))
    self.sampler = sampler.get('name', 'euler')
    self.sample_steps = int(sampler.get('steps', 16))
    if self.time_dist.stateful:
      raise ValueError(f'Time distribution {name!r} keeps state between '
                       'steps, which this task does not carry; use a '
                       'stateless one (uniform, logit_normal, ...).')

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    dtype = jnp.uint8 if self.data_key == 'image' else jnp.float32
    shape = self.x_shape if self.codec is None else self.codec.image_shape
    return {self.data_key: jax.ShapeDtypeStruct(
        (batch_size,) + shape, dtype),
            'label': jax.ShapeDtypeStruct((batch_size,), jnp.int32)}

  def init_state(self, key: jax.Array) -> dict:
    del key
    return {}

  def to_x0(self, batch: dict, frozen=None) -> jax.Array:
    if self.codec is not None:  # uint8 images -> normalised latents
      x = self.codec.encode(frozen, batch[self.data_key])
      return x.reshape(x.shape[0], -1) if self.flatten else x
    return generation.batch_to_x0(batch, data_key=self.data_key,
                                  latent_scale=self.latent_scale,
                                  flatten=self.flatten)

  def noisy(self, x0: jax.Array, key: jax.Array):
    """(x_t, t) with one t per example (x0 itself at t_min when clean)."""
    b = x0.shape[0]
    if self.clean:
      return x0, jnp.full((b,), self.path.t_min, jnp.float32)
    k_t, k_e = jax.random.split(key)
    t, _ = self.time_dist.sample(k_t, b, path=self.path)
    eps = jax.random.normal(k_e, x0.shape, x0.dtype)
    return self.path.sample_xt(x0=x0, eps=eps, t=t), t

  def loss(self, params, frozen, task_state, batch, key):
    k_noise, k_model = jax.random.split(key)
    x0 = self.to_x0(batch, frozen)
    labels = batch['label'].astype(jnp.int32)
    x_t, t = self.noisy(x0, k_noise)
    logits = self.apply(params, x_t, t, {}, rngs=k_model, train=True)
    ce = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels)
    acc = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return jnp.mean(ce), {'accuracy': acc, 't': t}, task_state

  def guide(self, params) -> ClassifierGuide:
    """This classifier as a guide for a generator on the same path."""
    return ClassifierGuide(noisy_classifier.log_prob_fn(self.apply, params),
                           self.path)

  def logits(self, params, x: jax.Array) -> jax.Array:
    """Logits of clean data x (model space) at t = t_min."""
    t = jnp.full((x.shape[0],), self.path.t_min, jnp.float32)
    return self.apply(params, x, t, {})

  # -- Sampling: what the classifier's gradient alone draws ------------------

  def sample_cond(self, spec) -> dict[str, np.ndarray]:
    """n labels cycling through the classes, or {'per_class': m}: m of
    each class."""
    if isinstance(spec, dict):
      return {'label': np.repeat(np.arange(self.num_classes, dtype=np.int32),
                                 int(spec['per_class']))}
    return {'label': base.class_labels(int(spec), self.num_classes)}

  def eval_cond(self, batch: dict) -> dict:
    return {'label': batch['label'].astype(jnp.int32)}

  def to_media(self, samples, cond: dict) -> media_lib.Media:
    shape = self.x_shape if self.codec is None else self.codec.image_shape
    return base.array_media(samples, cond, x_shape=shape,
                            num_classes=self.num_classes)

  def sample(self, params, frozen, cond, key, *, n, guidance=1.0):
    """Classifier guidance (scale `guidance`) on an N(0, I) data model.

    A picture of what the classifier's gradient points at, per class: the
    probability-flow ODE of x0 ~ N(0, I) (exact velocity) plus s grad log
    p_phi(y | x_t, t). This is the loop's sample grid for this task; for
    real class-conditional samples guide a generator instead
    (`experiments.guidance_tradeoff`).
    """
    base_fn = standard_normal_velocity(self.path)
    den = guidance_lib.classifier_guidance(
        base_fn, noisy_classifier.log_prob_fn(self.apply, params),
        scale=guidance,
        path=self.path, prediction='velocity')
    shape = (n, int(np.prod(self.x_shape))) if self.flatten else (
        (n,) + self.x_shape)
    ts = samplers.make_grid('uniform', self.sample_steps, path=self.path)
    x = samplers.sample(self.sampler, den, key=key, shape=shape, cond=cond,
                        path=self.path, prediction='velocity', ts=ts)
    x = x.reshape((n,) + self.x_shape)
    if self.codec is not None:
      return self.codec.decode(frozen, x)
    return jnp.clip(x, -1.0, 1.0)


def standard_normal_velocity(path):
  """Exact PF-ODE velocity of data x0 ~ N(0, I) on `path`.

  x_t ~ N(0, (alpha^2 + sigma^2) I), so E[x0 | x_t] = alpha x_t / v and
  E[eps | x_t] = sigma x_t / v with v = alpha^2 + sigma^2.
  """

  def fn(x_t, t, cond):
    del cond
    alpha = path_base.bcast(path.alpha(t), x_t)
    sigma = path_base.bcast(path.sigma(t), x_t)
    v = alpha**2 + sigma**2
    return predictions.target('velocity', x0=alpha * x_t / v,
                              eps=sigma * x_t / v, t=t, path=path)

  return fn
