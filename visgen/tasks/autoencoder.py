"""Training a KL autoencoder (`visgen.models.autoencoder`) as a task, and the
latent codec that lets other tasks train in its latent space.

Loss (LDM's LPIPSWithDiscriminator, Rombach et al. 2022, App. G; Esser et
al. 2021 for the adaptive weight), per example:

  rec   = mean_pixels |x - D(z)|   (or squared: `rec_loss='l2'`)
        + perceptual_weight * d_LPIPS(x, D(z))   (evaluators.perceptual)
  kl    = KL(q(z|x) || N(0, I)) / num_pixels
  L_ae  = rec + kl_weight * kl + lambda * g,  g = -mean D_disc(D(z))
  L_d   = 1/2 mean(relu(1 - D_disc(x)) + relu(1 + D_disc(sg D(z))))

with z ~ q(z|x) (`sample_posterior`, default) or its mean. LDM sums rec and
KL over pixels / latent dims and divides by the batch; dividing both by the
number of pixels instead keeps LDM's ratio, so its kl_weight (1e-6) means the
same here while the loss stays O(1). The GAN terms are on only with a
discriminator in the model (`disc_layers > 0`) and `disc_weight > 0`, from
step `disc_start` on; LDM's adaptive weight
lambda = disc_weight * clip(|grad_W rec| / (|grad_W g| + 1e-4), 0, 1e4)
differentiates with respect to the decoder's last conv kernel W (computed
exactly with two vector-Jacobian products through that conv).

One optimizer for both players: the discriminator lives in the model's
parameters (`discriminator/...`) and the task returns L_ae + L_d where L_ae
sees the discriminator's parameters through a stop-gradient and L_d sees the
reconstruction through one, so d(total)/d(autoencoder) = dL_ae and
d(total)/d(discriminator) = dL_d: the two-optimizer GAN update of LDM with a
shared learning rate and schedule (Adam normalises each parameter's update,
so the sum's scale does not couple them). The task state counts steps for
`disc_start`.

Sampling = reconstruction of held-out images (`sample_cond(n)` gives the
first n images of `eval_split`); `to_media` shows input | reconstruction
panels. Evaluations: 'reconstruction' (PSNR, feature-net FID of
reconstructions against the floor) and 'latent_stats' (`visgen.evaluations`).
"""

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from visgen import media as media_lib
from visgen import param_tree
from visgen.data import preprocess
from visgen.models import autoencoder as ae_lib

REC_LOSSES = ('l1', 'l2')


def psnr(x, y) -> jax.Array:
  """Per-image PSNR (dB) of images in [-1, 1] (peak-to-peak range 2)."""
  mse = jnp.mean(jnp.square(x.astype(jnp.float32) - y), axis=(1, 2, 3))
  return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))


def _conv_same(x, w):
  return jax.lax.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


class AutoencoderTask:
  """Trains `autoencoder_kl` on uint8 image batches (see the module doc)."""

  def __init__(self, config, *, apply=None, frozen_apply=None):
    del frozen_apply
    self.apply = apply
    t = config.task
    self.x_shape = tuple(t.x_shape)
    self.data_key = 'image'
    self.batch_keys = ('image',)
    self.rec_loss = t.get('rec_loss', 'l1')
    if self.rec_loss not in REC_LOSSES:
      raise ValueError(f'config.task.rec_loss={self.rec_loss!r}; valid: '
                       f'{", ".join(REC_LOSSES)}.')
    self.kl_weight = float(t.get('kl_weight', 1e-6))
    self.perceptual_weight = float(t.get('perceptual_weight', 1.0))
    self.perceptual_net = t.get('perceptual_net', 'shapes')
    self.sample_posterior = bool(t.get('sample_posterior', True))
    self.disc_weight = float(t.get('disc_weight', 0.0))
    self.disc_start = int(t.get('disc_start', 0))
    has_disc = int(config.model.get('disc_layers', 0)) > 0
    if self.disc_weight > 0 and not has_disc:
      raise ValueError('config.task.disc_weight > 0 needs a discriminator: '
                       'set config.model.disc_layers > 0 (or disc_weight=0).')
    self.use_gan = self.disc_weight > 0
    self.eval_split = t.get('eval_split', 'test')
    self.data_cfg = config.data
    self._perceptual = None
    self._heldout = None

  # -- Networks ---------------------------------------------------------------

  def _net(self, params, x, method, **kw):
    if self.apply is None:
      raise ValueError('This task was built without a network; build it '
                       'with visgen.builder.build (or pass apply=).')
    return self.apply(params, x, None, None, method=method, **kw)

  def perceptual(self):
    if self._perceptual is None:
      from visgen.evaluators import perceptual  # pylint: disable=g-import-not-at-top
      self._perceptual = perceptual.perceptual_distance(self.perceptual_net)
    return self._perceptual

  def reconstruct(self, params, images):
    """Posterior-mean reconstructions in [-1, 1] of uint8 images."""
    x = preprocess.to_float(images)
    mean, _ = self._net(params, x, 'encode')
    return jnp.clip(self._net(params, mean, 'decode'), -1.0, 1.0)

  # -- Contract ---------------------------------------------------------------

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {self.data_key: jax.ShapeDtypeStruct(
        (batch_size,) + self.x_shape, jnp.uint8)}

  def init_state(self, key):
    del key
    return {'step': jnp.zeros((), jnp.int32)} if self.use_gan else {}

  def rec_terms(self, x, rec):
    """Per-example reconstruction (+ perceptual) loss and its parts."""
    diff = x - rec
    pix = jnp.abs(diff) if self.rec_loss == 'l1' else jnp.square(diff)
    pix = jnp.mean(pix, axis=(1, 2, 3))
    if self.perceptual_weight > 0:
      p = self.perceptual()(x, rec)
    else:
      p = jnp.zeros_like(pix)
    return pix + self.perceptual_weight * p, pix, p

  def loss(self, params, frozen, task_state, batch, key):
    del frozen
    k_post, k_drop = jax.random.split(key)
    x = preprocess.to_float(batch['image'])
    mean, logvar = self._net(params, x, 'encode', train=True, rngs=k_drop)
    z = (ae_lib.sample_posterior(k_post, mean, logvar)
         if self.sample_posterior else mean)
    h = self._net(params, z, 'decode_features', train=True,
                  rngs=jax.random.fold_in(k_drop, 1))
    flat = param_tree.flatten(params)
    w, b = flat['decoder/conv_out/kernel'], flat['decoder/conv_out/bias']
    rec = _conv_same(h, w) + b
    rec_ex, pix, p = self.rec_terms(x, rec)
    kl = ae_lib.kl_divergence(mean, logvar) / np.prod(self.x_shape)
    loss = jnp.mean(rec_ex) + self.kl_weight * jnp.mean(kl)
    aux = dict(rec=pix, perceptual=p, kl=kl,
               psnr=psnr(x, jnp.clip(jax.lax.stop_gradient(rec), -1, 1)))
    if not self.use_gan:
      return loss, aux, task_state

    # Generator: the discriminator's parameters behind a stop-gradient.
    frozen_d = jax.lax.stop_gradient(params)
    g_fn = lambda r: -jnp.mean(self._net(frozen_d, r, 'discriminate'))
    g = g_fn(rec)
    # LDM's adaptive weight: gradient norms at the last decoder layer.
    hs, ws, recs = jax.lax.stop_gradient((h, w, rec))
    _, vjp = jax.vjp(lambda k: _conv_same(hs, k), ws)
    grad_rec = vjp(jax.grad(lambda r: jnp.mean(self.rec_terms(x, r)[0]))(
        recs))[0]
    grad_g = vjp(jax.grad(g_fn)(recs))[0]
    d_weight = jnp.clip(jnp.linalg.norm(grad_rec)
                        / (jnp.linalg.norm(grad_g) + 1e-4), 0.0, 1e4)
    d_weight = jax.lax.stop_gradient(d_weight) * self.disc_weight
    on = (task_state['step'] >= self.disc_start).astype(jnp.float32)
    # Discriminator: hinge loss on real x and the stopped reconstruction.
    logits_real = self._net(params, x, 'discriminate')
    logits_fake = self._net(params, recs, 'discriminate')
    d_loss = 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real))
                    + jnp.mean(jax.nn.relu(1.0 + logits_fake)))
    loss = loss + on * (d_weight * g + d_loss)
    aux.update(g_loss=g, d_loss=d_loss, d_weight=d_weight, gan_on=on)
    return loss, aux, {'step': task_state['step'] + 1}

  def _heldout_images(self, n: int) -> np.ndarray:
    if self._heldout is None or len(self._heldout) < n:
      from visgen import data  # pylint: disable=g-import-not-at-top
      from visgen.data import pipeline  # pylint: disable=g-import-not-at-top
      source = data.get_source(self.data_cfg['name'], split=self.eval_split,
                               **pipeline.source_kwargs(self.data_cfg))
      if len(source) == 0:
        raise ValueError(f'The {self.eval_split!r} split is empty; set '
                         'config.task.eval_split to a split with images.')
      idx = [i % len(source) for i in range(n)]
      self._heldout = np.stack([np.asarray(source[i][self.data_key])
                                for i in idx])
    return self._heldout[:n]

  def sample_cond(self, spec) -> dict[str, np.ndarray]:
    """The first n held-out images (`eval_split`) to reconstruct."""
    n = int(spec['per_class']) if isinstance(spec, dict) else int(spec)
    return {self.data_key: self._heldout_images(n)}

  def eval_cond(self, batch):
    return {self.data_key: batch[self.data_key]}

  def sample(self, params, frozen, cond, key, *, n: int,
             guidance: Any = 1.0):
    """Reconstructions (posterior mean) of cond['image'], in [-1, 1]."""
    del frozen, key, guidance
    return self.reconstruct(params, cond[self.data_key][:n])

  def to_media(self, samples, cond) -> media_lib.Media:
    """input | reconstruction panels."""
    rec = preprocess.to_uint8(np.asarray(samples, np.float32))
    return media_lib.Media(rec, kind='image',
                           condition=np.asarray(cond['image'])[:len(rec)])


# ----------------------------------------------------------------------------
# Latent statistics and the latent codec (frozen encoder / decoder).
# ----------------------------------------------------------------------------

STATS_FILE = 'latent_stats.json'


def latent_stats(latents) -> dict[str, Any]:
  """SD's scale factor 1/std over every latent value, and EDM2's
  per-channel mean/std, of latents (N, h, w, c)."""
  z = np.asarray(latents, np.float64).reshape(-1, np.shape(latents)[-1])
  return dict(latent_scale_factor=float(1.0 / z.std()),
              latent_global_mean=float(z.mean()),
              latent_mean=z.mean(0).tolist(), latent_std=z.std(0).tolist(),
              latent_stats_examples=int(np.shape(latents)[0]))


def read_latent_stats(workdir: str) -> dict[str, Any]:
  """The latent statistics stored with an autoencoder workdir
  (latent_stats.json, else its metrics.json)."""
  for name in (STATS_FILE, 'metrics.json'):
    path = os.path.join(os.path.expanduser(workdir), name)
    try:
      with open(path) as f:
        d = json.load(f)
    except (OSError, ValueError):
      continue
    if 'latent_scale_factor' in d:
      return {k: v for k, v in d.items() if k.startswith('latent_')}
  raise FileNotFoundError(
      f'No latent statistics in {workdir} ({STATS_FILE} or metrics.json with '
      "latent_scale_factor): train it with config.eval['latent_stats'], or "
      'run python -m visgen.data.latents --autoencoder=WORKDIR --stats_only.')


NORMALIZE = ('scale', 'channel', 'none')


class LatentCodec:
  """A frozen autoencoder as the image <-> latent map of another task.

  encode: uint8 images -> (z - shift) * scale with z the posterior mean
  (or a sample, `sample=True`); decode: the inverse, then the decoder, in
  [-1, 1]. `normalize`: 'scale' (SD: shift 0, scale = 1/std over all
  values), 'channel' (EDM2: per-channel (z - mean_c) / std_c * final_std),
  'none'; the statistics come from the autoencoder workdir
  (`read_latent_stats`) unless given (`scale=`).
  """

  def __init__(self, name: str, apply, *, image_shape, normalize='scale',
               sample=False, scale=None, shift=None, final_std=0.5):
    if normalize not in NORMALIZE:
      raise ValueError(f'latent normalize={normalize!r}; valid: '
                       f'{", ".join(NORMALIZE)}.')
    self.name, self.apply = name, apply
    self.image_shape = tuple(image_shape)
    self.sample = bool(sample)
    self.scale = np.asarray(1.0 if scale is None else scale, np.float32)
    self.shift = np.asarray(0.0 if shift is None else shift, np.float32)
    if normalize == 'channel':
      self.scale = self.scale * np.float32(final_std)

  def _p(self, frozen):
    if self.name not in frozen:
      raise ValueError(f'The frozen autoencoder {self.name!r} is not among '
                       f'the frozen components {sorted(frozen)}; add '
                       f'config.frozen.{self.name}.')
    return frozen[self.name]

  def encode(self, frozen, images, key=None):
    x = preprocess.to_float(images)
    mean, logvar = self.apply(self._p(frozen), x, method='encode')
    z = (ae_lib.sample_posterior(key, mean, logvar)
         if self.sample and key is not None else mean)
    return jax.lax.stop_gradient((z - self.shift) * self.scale)

  def normalize(self, z):
    """Raw latents (the encoder's posterior means, as `visgen.data.latents`
    stores them) -> the normalised latents `encode` returns."""
    return (jnp.asarray(z, jnp.float32) - self.shift) * self.scale

  def decode(self, frozen, z):
    z = z / self.scale + self.shift
    return jnp.clip(self.apply(self._p(frozen), z, method='decode'), -1, 1)


def _check_latent_channels(config, name: str) -> None:
  """The task's latent channels and side against the frozen autoencoder's
  z_channels and downsampling (its config.json), before a step fails on a
  shape."""
  from visgen import frozen as frozen_lib  # pylint: disable=g-import-not-at-top
  source = str(config.frozen[name].get('source', ''))
  model = frozen_lib.declared_model(dict(config.frozen[name]))
  z = (model or {}).get('z_channels')
  x_shape = tuple(config.task.get('x_shape', ()))
  if z is not None and x_shape and int(x_shape[-1]) != int(z):
    raise ValueError(
        f'config.task.x_shape={x_shape} has {x_shape[-1]} latent channels '
        f'but the frozen autoencoder {name!r} ({source}) encodes '
        f'{z} (model.z_channels); set the last entry of x_shape (and the '
        f"model's in_channels) to {z}, e.g. configs/shapes.py:z={z}.")
  # The latent side: the image side halved once per level after the first.
  mult = (model or {}).get('ch_mult')
  image = tuple((config.task.get('latent') or {}).get('image_shape', ()))
  if mult and image and x_shape:
    f = 2 ** (len(mult) - 1)
    if int(x_shape[0]) * f != int(image[0]):
      raise ValueError(
          f'config.task.x_shape={x_shape} has side {x_shape[0]} but the '
          f'frozen autoencoder {name!r} ({source}) downsamples by f={f} '
          f'(model.ch_mult={list(mult)}): {image[0]}x{image[0]} images give '
          f'{image[0] // f}x{image[0] // f} latents; pass the matching f, '
          f'e.g. configs/t2i_shapes.py:f={f}.')


def codec_from_config(config, frozen_apply) -> LatentCodec | None:
  """`config.task.latent` (dict(frozen=NAME, image_shape=..., normalize=
  'scale', sample=False, scale=None)) -> LatentCodec; None without it."""
  spec = config.task.get('latent')
  if not spec:
    return None
  spec = dict(spec)
  name = spec.pop('frozen', 'autoencoder')
  if name not in (frozen_apply or {}):
    raise ValueError(f'config.task.latent.frozen={name!r} names no frozen '
                     f'component; add config.frozen.{name} = dict(source='
                     "'workdir:AUTOENCODER_WORKDIR').")
  normalize = spec.pop('normalize', 'scale')
  scale, shift = spec.pop('scale', None), None
  if normalize != 'none' and scale is None:
    # A workdir, or the directory of a converted weight file
    # (visgen.convert), holds the statistics.
    source = str(config.frozen[name].get('source', ''))
    kind, _, path = source.partition(':')
    if kind not in ('workdir', 'npz', 'safetensors'):
      raise ValueError(f'config.task.latent.scale is needed: the frozen '
                       f'autoencoder {name!r} has no source with latent '
                       'statistics.')
    stats = read_latent_stats(path if kind == 'workdir'
                              else os.path.dirname(path))
    if normalize == 'scale':  # SD (SD3/Flux also shift)
      scale = stats['latent_scale_factor']
      shift = stats.get('latent_shift_factor')
    else:
      scale = 1.0 / np.asarray(stats['latent_std'])
      shift = np.asarray(stats['latent_mean'])
  _check_latent_channels(config, name)
  unknown = sorted(set(spec) - {'image_shape', 'sample', 'final_std'})
  if unknown:
    raise ValueError(f'config.task.latent has unknown fields {unknown}.')
  return LatentCodec(name, frozen_apply[name], image_shape=spec['image_shape'],
                     normalize=normalize, sample=spec.get('sample', False),
                     scale=scale, shift=shift,
                     final_std=spec.get('final_std', 0.5))
