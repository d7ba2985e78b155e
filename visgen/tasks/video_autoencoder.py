"""Training the causal video autoencoder (`visgen.models.video_autoencoder`)
as a task: the image autoencoder task (`visgen.tasks.autoencoder`) on the
batch's 'video' clips.

  config.data  = dict(name='shapes_video', resolution=16, num_frames=9, ...)
  config.task  = dict(name='video_autoencoder', x_shape=(9, 16, 16, 3),
                      rec_loss='l1', kl_weight=1e-6, sample_posterior=True)
  config.model = dict(name='video_autoencoder', num_frames=9, input_size=16,
                      ...)

Loss, per clip: rec = mean over frames and pixels of |x - D(z)| (or squared,
`rec_loss='l2'`), kl = KL(q(z|x) || N(0, I)) / (T H W C), L = rec +
kl_weight * kl, z ~ q(z|x) (or its mean). configs/video_autoencoder.py
trains with the squared error: with L1 these small-object scenes sit on a
background-only plateau (18.5 dB after 2000 one-frame steps, against 23.3 dB
with L2; the median of a pixel that an object covers only sometimes is the
background). No perceptual term (the project's
perceptual net is a 32x32 RGB scene net; moving_digits is grey) and no GAN
(the image task's adaptive weight is written for a 2-D conv_out): both are
refused with a message. Everything else is AutoencoderTask's: held-out
clips of `eval_split` are what `sample` reconstructs (posterior means);
`to_media` shows input | reconstruction side by side as video (GIF).
Evaluations: 'video_reconstruction' (per-frame PSNR and temporal flicker,
`visgen.evaluators.video_ae`) and 'latent_stats'.
"""

import jax
import jax.numpy as jnp
import numpy as np

from visgen import media as media_lib
from visgen.data import preprocess
from visgen.models import autoencoder as ae_lib
from visgen.tasks import autoencoder
from visgen.tasks import video
from visgen.validate import UserError


class VideoAutoencoderTask(autoencoder.AutoencoderTask):
  """Trains `video_autoencoder` on uint8 clips (module docstring)."""

  def __init__(self, config, *, apply=None, frozen_apply=None):
    t = config.task
    x_shape = tuple(t.x_shape)
    if len(x_shape) != 4:
      raise UserError(f'config.task.x_shape must be (T, H, W, C) for the '
                      f'video_autoencoder task, got {x_shape}.')
    if float(t.get('disc_weight', 0.0)) > 0:
      raise UserError('The video_autoencoder task has no discriminator; set '
                      'config.task.disc_weight=0.')
    if float(t.get('perceptual_weight', 0.0)) > 0:
      raise UserError('The video_autoencoder task has no perceptual loss '
                      '(L1/L2 + KL only); set config.task.perceptual_weight'
                      '=0.')
    data = dict(config.data)
    want = {'num_frames': x_shape[0], 'resolution': x_shape[1]}
    for k, v in want.items():
      if k in data and int(data[k]) != int(v):
        raise UserError(f'config.data.{k}={data[k]} does not match '
                        f'config.task.x_shape={x_shape}; set both to {v} '
                        f'(or x_shape to match the data).')
    super().__init__(config, apply=apply, frozen_apply=frozen_apply)
    self.perceptual_weight = 0.0
    self.data_key = 'video'
    self.batch_keys = ('video',)

  def clip(self, batch) -> jax.Array:
    return video.video_clip(batch, self.x_shape, 'video_autoencoder')

  def loss(self, params, frozen, task_state, batch, key):
    del frozen
    k_post, k_drop = jax.random.split(key)
    x = self.clip(batch)
    mean, logvar = self._net(params, x, 'encode', train=True, rngs=k_drop)
    z = (ae_lib.sample_posterior(k_post, mean, logvar)
         if self.sample_posterior else mean)
    rec = self._net(params, z, 'decode', train=True,
                    rngs=jax.random.fold_in(k_drop, 1))
    diff = x - rec
    pix = jnp.abs(diff) if self.rec_loss == 'l1' else jnp.square(diff)
    pix = jnp.mean(pix, axis=(1, 2, 3, 4))
    kl = ae_lib.kl_divergence(mean, logvar) / np.prod(self.x_shape)
    loss = jnp.mean(pix) + self.kl_weight * jnp.mean(kl)
    # PSNR (dB, range 2 of [-1, 1]) per frame, averaged per clip.
    mse = jnp.mean(jnp.square(jnp.clip(jax.lax.stop_gradient(rec), -1, 1)
                              - x), axis=(2, 3, 4))
    psnr = 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))
    aux = dict(rec=pix, kl=kl, psnr=jnp.mean(psnr, axis=1),
               psnr_first_frame=psnr[:, 0])
    return loss, aux, task_state

  def to_media(self, samples, cond) -> media_lib.Media:
    """input | reconstruction side by side, as video."""
    rec = preprocess.to_uint8(np.asarray(samples, np.float32))
    real = np.asarray(cond['video'])[:len(rec)]
    gap = np.full(rec.shape[:3] + (1, rec.shape[-1]), 128, np.uint8)
    return media_lib.Media(np.concatenate([real, gap, rec], axis=3),
                           kind='video')
