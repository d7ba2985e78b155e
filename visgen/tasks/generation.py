"""Unconditional and class-conditional generation (the default task).

Batch -> (x0 in [-1, 1], cond): uint8 'image' batches are mapped with
`preprocess.to_float`; float 'latent' batches (pre-encoded autoencoder
latents) are scaled by `task.latent_scale`. Labels get classifier-free
dropout *per sample*: each label becomes the null class `num_classes` with
probability `label_dropout`, independently. The loss is
`objectives.loss.unified_loss` with the config's path / prediction /
weighting / time distribution; sampling uses the config's sampler with
classifier-free guidance whose scale is a traced value (no recompiles).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from visgen import config_lib
from visgen import interpolants
from visgen import media as media_lib
from visgen import samplers
from visgen.classification import diffusion_classifier as dc_lib
from visgen.data import preprocess
from visgen.evaluators import bits_per_dim as bpd_lib
from visgen.objectives import learned_variance as lv_lib
from visgen.objectives import loss as loss_lib
from visgen.objectives import precond as precond_lib
from visgen.objectives import time_dists
from visgen.objectives import weightings
from visgen.samplers import guidance as guidance_lib
from visgen.samplers import likelihood
from visgen.tasks import autoencoder as ae_task
from visgen.tasks import base

# Sampler-config keys that configure guidance, not the sampler: `cfg_scale`
# (read by the loop and passed as `guidance`), `cfg_rescale`, `cfg_interval`,
# `cfg_channels` (see `GenerationTask.sample`).
CFG_KEYS = ('cfg_scale', 'cfg_rescale', 'cfg_interval', 'cfg_channels')


def batch_to_x0(batch: dict, *, data_key: str = 'image',
                latent_scale: float = 1.0, flatten: bool = False) -> jax.Array:
  """x0 in model space: uint8 images -> [-1, 1]; float latents * scale."""
  x = batch[data_key]
  if jnp.issubdtype(x.dtype, jnp.integer):
    x = preprocess.to_float(x)
  else:
    x = x.astype(jnp.float32) * latent_scale
  return x.reshape(x.shape[0], -1) if flatten else x


def drop_labels(key: jax.Array, labels_B: jax.Array, *, p: float,
                null_class: int) -> jax.Array:
  """Replaces each label by `null_class` with probability p, per sample."""
  if p <= 0.0:
    return labels_B
  drop_B = jax.random.bernoulli(key, p, labels_B.shape)
  return jnp.where(drop_B, null_class, labels_B)


class GenerationTask:
  """x0 from images or latents; optional class labels with CFG dropout.

  `apply` is the network (`visgen.models.make_apply`); `frozen_apply` the
  frozen components' apply functions by name (none used yet).
  """

  def __init__(self, config, *, apply=None, frozen_apply=None):
    self.apply = apply
    self.frozen_apply = dict(frozen_apply or {})
    t = config.task
    self.num_classes = int(t.get('num_classes', 0))
    self.label_dropout = float(t.get('label_dropout', 0.0))
    self.flatten = bool(t.get('flatten', False))
    self.data_key = t.get('data_key', 'image')
    self.latent_scale = float(t.get('latent_scale', 1.0))
    self.x_shape = tuple(t.x_shape)
    # On-the-fly latents (config.task.latent): a frozen autoencoder encodes
    # the image batches inside the step and decodes the samples
    # (`visgen.tasks.autoencoder.LatentCodec`); x_shape is the latent's.
    self.codec = ae_task.codec_from_config(config, self.frozen_apply)
    name, kw = config_lib.named(config.path)
    self.path = interpolants.get_path(name, **kw)
    self.prediction = config.prediction
    name, kw = config_lib.named(config.weighting)
    self.weighting = weightings.get_weighting(name, **kw)
    name, kw = config_lib.named(config.time_dist)
    self.time_dist = time_dists.get_time_dist(name, **kw)
    self.sampler_cfg = config.sampler
    # Input preconditioning (EDM's c_in / c_noise), shared by the loss and
    # the samplers through `network` (None: 'edm' for prediction 'edm').
    self.precond = precond_lib.resolve_mode(
        config.get('precond'), prediction=self.prediction, path=self.path)
    # iDDPM's learned variance (L_hybrid; a learn_sigma model's 2C outputs),
    # e.g. config.learned_variance = dict(lambda_vlb=0.001); None: off.
    self.learned_variance = lv_lib.from_config(
        config.get('learned_variance'))
    # The batch entries this task reads (others stay on the host).
    self.batch_keys = (self.data_key,) + (
        ('label',) if self.num_classes else ())

  # -- Batch -> (x0, cond) --------------------------------------------------

  def to_x0(self, batch: dict, frozen=None, key=None) -> jax.Array:
    if self.codec is not None:
      if self.data_key == 'image':  # uint8 images -> normalised latents
        x = self.codec.encode(frozen, batch[self.data_key], key)
      else:  # pre-encoded latents (visgen.data.latents): normalised only
        x = self.codec.normalize(batch[self.data_key])
      return x.reshape(x.shape[0], -1) if self.flatten else x
    return batch_to_x0(batch, data_key=self.data_key,
                       latent_scale=self.latent_scale, flatten=self.flatten)

  def from_x(self, x: jax.Array) -> jax.Array:
    """Model space -> data space (x_shape; latents unscaled)."""
    x = x.reshape((x.shape[0],) + self.x_shape)
    if self.data_key != 'image' and self.codec is None:
      x = x / self.latent_scale
    return x

  def cond(self, batch: dict, key: jax.Array | None) -> dict:
    if not self.num_classes:
      return {}
    labels = batch['label'].astype(jnp.int32)
    if key is not None:
      labels = drop_labels(key, labels, p=self.label_dropout,
                           null_class=self.num_classes)
    return self.class_cond(labels)

  def class_cond(self, labels) -> dict:
    """The network's conditioning for class labels."""
    return {'label': labels}

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    dtype = jnp.uint8 if self.data_key == 'image' else jnp.float32
    shape = (self.codec.image_shape if self.codec is not None
             and self.data_key == 'image' else self.x_shape)
    spec = {self.data_key: jax.ShapeDtypeStruct((batch_size,) + shape,
                                                dtype)}
    if self.num_classes:
      spec['label'] = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    return spec

  # -- The network as the loss and the samplers see it ----------------------

  def network(self, params, **apply_kw):
    """`(x_t, t, cond) -> prediction` with the input preconditioning; the
    loss and every sampler call the network through this one function."""
    if self.apply is None:
      raise ValueError('This task was built without a network; build it '
                       'with visgen.builder.build (or pass apply=).')
    fn = lambda x_t, t, cond: self.apply(params, x_t, t, cond, **apply_kw)
    return precond_lib.precondition(fn, path=self.path, mode=self.precond)

  def diffusion_classifier(self, params, **kw) -> dc_lib.DiffusionClassifier:
    """p(y | x) by Bayes' rule with this task's denoiser, path and
    prediction (Li et al. 2023); inputs are x0 in model space (`to_x0`).
    `kw`: DiffusionClassifier's t_min, t_max, log_prior."""
    if not self.num_classes:
      raise ValueError('A diffusion classifier needs a class-conditional '
                       'task (config.task.num_classes > 0).')
    return dc_lib.DiffusionClassifier(
        self.network(params), self.path, self.prediction, self.num_classes,
        cond_fn=self.class_cond, **kw)

  # -- Training -------------------------------------------------------------

  def init_state(self, key: jax.Array) -> dict:
    """The importance sampler's loss history ({} for other p(t))."""
    del key
    if self.time_dist.stateful:
      return {'time_dist': self.time_dist.init_state()}
    return {}

  def loss(self, params, frozen, task_state, batch, key):
    k_drop, k_loss, k_model = jax.random.split(key, 3)
    x0 = self.to_x0(batch, frozen, jax.random.fold_in(key, 7))
    apply_fn = self.network(params, rngs=k_model, train=True)
    time_state = (task_state or {}).get('time_dist')
    if self.time_dist.stateful and time_state is None:
      raise ValueError('The time distribution keeps state, but the task '
                       'state has none; create the train state with '
                       'task.init_state (visgen.builder does).')

    loss, aux = loss_lib.unified_loss(
        apply_fn, x0=x0, cond=self.cond(batch, k_drop), key=k_loss,
        path=self.path, prediction=self.prediction, weighting=self.weighting,
        time_dist=self.time_dist, time_state=time_state,
        learned_variance=self.learned_variance,
        pixel_weight=self.pixel_weight(batch))
    metrics = {k: aux[k] for k in ('mse', 'vlb') if k in aux}
    return loss, metrics, self.update_state(task_state, aux)

  def pixel_weight(self, batch: dict):
    """Element-wise weights of the squared error (None: uniform)."""
    del batch
    return None

  def update_state(self, task_state, aux: dict):
    """Pushes each example's loss at its sampled t into the importance
    sampler's history (ADM: the loss before the 1 / (T p) correction)."""
    if not self.time_dist.stateful:
      return task_state
    hist = self.time_dist.update(task_state['time_dist'], aux['t'],
                                 jax.lax.stop_gradient(aux['uncorrected']))
    return dict(task_state, time_dist=hist)

  # -- Sampling -------------------------------------------------------------

  def sample_cond(self, spec) -> dict[str, np.ndarray]:
    """Conditioning of a grid or an evaluation batch.

    `spec` is n (labels cycling through the classes: class-balanced) or
    {'per_class': m} (m of each class, in class order).
    """
    if not self.num_classes:
      return {}
    if isinstance(spec, dict):
      return {'label': np.repeat(np.arange(self.num_classes, dtype=np.int32),
                                 int(spec['per_class']))}
    return {'label': base.class_labels(int(spec), self.num_classes)}

  def eval_cond(self, batch: dict) -> dict:
    """A held-out batch's labels (no dropout)."""
    return self.cond(batch, None)

  def null_cond(self, frozen, n: int) -> dict:
    """The unconditional cond of n inputs: the null class (label
    `num_classes`, the row label dropout trains) or nothing."""
    del frozen
    if not self.num_classes:
      return {}
    return {'label': jnp.full((n,), self.num_classes, jnp.int32)}

  # What a user may ask for by name (`visgen.generate`): class labels here;
  # subclasses that need condition images from data ask for nothing.
  REQUESTS = ('label',)

  def request_cond(self, n: int, *, label=None, prompt=None,
                   negative=None) -> dict[str, np.ndarray]:
    """The conditioning of n samples a user asked for (`visgen.generate`):
    class labels (one, repeated, or several, cycled); an unconditional
    model takes none. A request the task cannot honour is a ValueError
    saying what to pass instead."""
    if prompt is not None or negative is not None:
      raise ValueError('this workdir\'s model is class-conditional, not '
                       'text-conditional: pass --label=K'
                       + (f' (0..{self.num_classes - 1})'
                          if self.num_classes else ' (or nothing)')
                       + ' instead of --prompt/--negative.')
    if not self.num_classes:
      if label is not None:
        raise ValueError('this workdir\'s model is unconditional: drop '
                         '--label.')
      return {}
    if label is None:
      return self.sample_cond(n)
    labels = np.atleast_1d(np.asarray(label))
    if (labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or
        np.any(labels < 0) or np.any(labels >= self.num_classes)):
      raise ValueError(f'--label={",".join(map(str, labels.ravel()))} is '
                       f'invalid: the model has '
                       f'{self.num_classes} classes; pass integers in '
                       f'0..{self.num_classes - 1}.')
    return {'label': labels[np.arange(n) % len(labels)].astype(np.int32)}

  def sample(self, params, frozen, cond: dict, key: jax.Array, *, n: int,
             guidance: Any = 1.0, sampler: dict | None = None,
             cfg: dict | None = None, classifier: Any = None,
             classifier_scale: Any = 0.0) -> jax.Array:
    """n samples in data space; `guidance` (CFG scale) may be traced.

    Classifier-free guidance (`samplers.guidance.cfg`) with the null class
    as the unconditional half: u + s * (c - u), so s = 1 is the plain
    conditional model (DiT's convention). The sampler config's optional
    `cfg_rescale` (phi, default 0: off), `cfg_interval` ((t_lo, t_hi),
    default None: every t) and `cfg_channels` (DiT's partial guidance,
    default None or 0: every channel) configure it; `cfg` (keys rescale,
    interval, channels; values may be traced) overrides them.

    Args:
      params, frozen, cond, key, n, guidance: see `tasks.base.Task`.
      sampler: a sampler config replacing the task's (name, steps, ...).
      cfg: CFG options overriding the sampler config's.
      classifier: a noise-aware classifier's guide
        (`NoisyClassifierTask.guide`): its gradient, scaled by
        `classifier_scale`, guides the CFG denoiser (ADM-G; the mean-shift
        form with the ancestral 'ddpm' sampler, the score form otherwise).
      classifier_scale: the classifier guidance scale (may be traced).
    """
    name, kw = config_lib.named(sampler or self.sampler_cfg)
    opts = {k: kw.pop(k) for k in CFG_KEYS if k in kw}
    opts = dict(rescale=opts.get('cfg_rescale', 0.0),
                interval=opts.get('cfg_interval'),
                channels=opts.get('cfg_channels') or None)
    opts.update(cfg or {})
    denoise = self.network(params)
    if self.learned_variance is not None:
      # Ancestral sampling uses the learned variance unless told otherwise;
      # CFG then guides the mean channels only (v from the conditional
      # half); other samplers see the mean channels alone.
      if name == 'ddpm':
        kw.setdefault('variance', 'learned')
      channels = (int(np.prod(self.x_shape)) if self.flatten
                  else self.x_shape[-1])
      if kw.get('variance') == 'learned':
        opts['channels'] = opts['channels'] or channels
      else:
        full = denoise
        denoise = lambda x_t, t, c: full(x_t, t, c)[..., :channels]
    if self.num_classes:
      interval = opts['interval']
      denoise = guidance_lib.cfg(
          denoise, scale=guidance, null_class=self.num_classes,
          rescale=opts['rescale'],
          interval=None if interval is None else tuple(interval),
          channels=opts['channels'])
    if classifier is not None:
      if not self.num_classes:
        raise ValueError('Classifier guidance needs a class-conditional '
                         'generator (task.num_classes > 0).')
      if classifier.path != self.path:
        raise ValueError(
            f'The classifier was trained on path {classifier.path} but the '
            f'generator on {self.path}: a noise-aware classifier must see '
            "the x_t of the generator's own path. Retrain it with "
            '--config.path matching the generator.')
      interval = opts['interval']
      interval = None if interval is None else tuple(interval)
      if name == 'ddpm':  # ancestral: ADM's mean-shift form
        kw['mean_shift'] = guidance_lib.classifier_mean_shift(
            classifier.log_prob, scale=classifier_scale, interval=interval)
      else:  # ODE / SDE / DDIM: the score form
        denoise = guidance_lib.classifier_guidance(
            denoise, classifier.log_prob, scale=classifier_scale,
            path=self.path, prediction=self.prediction, interval=interval)
    shape = (n, int(np.prod(self.x_shape))) if self.flatten else (
        (n,) + self.x_shape)
    steps = kw.pop('steps')
    ts = samplers.make_grid(kw.pop('grid', 'auto'), steps, path=self.path,
                            sampler=name)
    x = samplers.sample(name, denoise, key=key, shape=shape, cond=cond,
                        path=self.path, prediction=self.prediction, ts=ts,
                        **kw)
    x = self.from_x(x)
    return x if self.codec is None else self.codec.decode(frozen, x)

  def to_media(self, samples, cond: dict) -> media_lib.Media:
    """uint8 images (latents: their first channels), one row per class."""
    shape = self.x_shape if self.codec is None else self.codec.image_shape
    return base.array_media(samples, cond, x_shape=shape,
                            num_classes=self.num_classes)

  # -- Evaluation hooks -----------------------------------------------------

  def likelihood_cond(self, frozen, batch: dict, n: int) -> dict:
    """The condition `bits_per_dim` scores under: the null class (the
    unconditional model) for class-conditional models."""
    del frozen, batch
    return ({'label': jnp.full((n,), self.num_classes, jnp.int32)}
            if self.num_classes else {})

  def bits_per_dim(self, params, frozen, batch: dict, key: jax.Array, *,
                   num_steps: int = 50,
                   divergence: str = 'hutchinson') -> jax.Array:
    """Bits/dim (B,) of a held-out uint8 image batch under the
    probability-flow ODE with the condition `likelihood_cond` (here
    unconditional: the null class), an upper bound through uniform
    dequantisation (`evaluators.bits_per_dim`)."""
    images = batch[self.data_key]
    if self.codec is not None:
      raise ValueError('bits_per_dim is not defined for latent tasks (a '
                       'frozen autoencoder); remove it from config.eval.')
    if self.data_key != 'image' or images.dtype != jnp.uint8:
      raise ValueError('bits_per_dim needs uint8 image batches; this task '
                       f'trains on {self.data_key!r} ({images.dtype}).')
    k_deq, k_nll = jax.random.split(key)
    y = bpd_lib.dequantize(images, k_deq)
    x = y.reshape(y.shape[0], -1) if self.flatten else y
    cond = self.likelihood_cond(frozen, batch, x.shape[0])
    logp, _ = likelihood.ode_log_likelihood(
        self.network(params), x, path=self.path, prediction=self.prediction,
        cond=cond, divergence=divergence, key=k_nll, num_steps=num_steps)
    return bpd_lib.nats_to_bits_per_dim(
        nll_nats=-logp, num_dims=int(np.prod(images.shape[1:])))

