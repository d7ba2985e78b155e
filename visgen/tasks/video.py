"""Video generation: class-conditional and image-to-video (first frame
given) on `shapes_video` / `moving_digits`, with the video DiT
(`visgen.models.video_dit`, linear or softmax attention).

  config.data  = dict(name='shapes_video', resolution=16, num_frames=8, ...)
  config.task  = dict(name='video', x_shape=(8, 16, 16, 3), num_classes=4,
                      label_dropout=0.1, first_frame=True,
                      frame_dropout=0.1)
  config.model = dict(name='video_dit', num_frames=8, input_size=16,
                      num_classes=4, first_frame=True, ...)

Batch -> x0 = the clip 'video' (uint8 (B, T, H, W, C) -> [-1, 1]); cond =
{'label': the class with classifier-free dropout (GenerationTask)} plus,
with `first_frame`, {'first_frame': frame 0 of the clip in [-1, 1]}, replaced
per example by zeros (the null frame, as SVD drops its image condition) with
probability `frame_dropout`. Loss, path, time distribution, sampler and
classifier-free guidance on the label are GenerationTask's. Image-to-video
samples keep the given first frame as frame 0 (the model generates the
others; its own frame 0 is replaced). Media are video (`visgen.media`:
GIF preview and ADM-style .npz), the given first frame shown left of each
clip.

Block-causal training and rollout (`config.task.block_frames = F`, the same
as the model's `block_frames`): every block of F frames gets its own time t
(diffusion forcing, Chen et al. 2024: the loss is the one loop's loss over
(B * blocks) block-examples, each with its t and noise), so the block-causal
model learns to denoise a block given past blocks at any noise level,
clean included. `task.rollout` then generates any number of frames block by
block with the linear-attention model's constant-size state
(`VideoDiT.step`, SANA-Video's long-video mode): each block is integrated
from t = 1 to 0 (Heun on the linear path's velocity, the sampler config's
steps) given the past's running sums, then its clean frames are fed once at
t = 0 to commit them. Classifier-free guidance on the label uses the
conditional state of the past for both halves. `rollout(context=...)`
continues given frames. Self-forcing (training on the model's own
rollouts) is built for the action-conditioned world model
(`WorldModelTask.self_forced_loss`), where the ground truth continues every
rollout.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from visgen import media as media_lib
from visgen.data import preprocess
from visgen.objectives import loss as loss_lib
from visgen.tasks import base
from visgen.tasks import generation
from visgen.tasks import image_cond
from visgen.validate import UserError


def heun_block(velocity, x, steps: int):
  """One block denoised from t = 1 to 0: `steps` Heun steps on a uniform
  grid (Euler on the last, t = 0), `velocity(x, t)` the (guided) field."""
  ts = jnp.linspace(1.0, 0.0, steps + 1)

  def body(i, x):
    t0, t1 = ts[i], ts[i + 1]
    d1 = velocity(x, t0)
    x_e = x + (t1 - t0) * d1
    d2 = velocity(x_e, t1)
    return jnp.where(t1 > 0, x + (t1 - t0) * 0.5 * (d1 + d2), x_e)

  return jax.lax.fori_loop(0, steps, body, x)


def video_clip(batch: dict, x_shape, task: str) -> jax.Array:
  """batch['video'] (B,) + x_shape as float in [-1, 1] (uint8 rescaled),
  with a clear error naming the fix when it is missing or mis-shaped."""
  if 'video' not in batch:
    raise UserError(f"The {task} task needs 'video' clips in the batch (it "
                    f'has {", ".join(sorted(batch))}); use the '
                    'shapes_video or moving_digits dataset.')
  v = batch['video']
  if tuple(v.shape[1:]) != tuple(x_shape):
    raise UserError(f"batch['video'] has shape {tuple(v.shape)}, expected "
                    f'(B,) + config.task.x_shape = (B,) + {tuple(x_shape)}; '
                    'match config.data num_frames / resolution.')
  return preprocess.to_float(v) if jnp.issubdtype(
      v.dtype, jnp.integer) else v.astype(jnp.float32)


class VideoTask(generation.GenerationTask):
  """Class-conditional / image-to-video generation (module docstring)."""

  # Its conditions come from data (held-out batches): `visgen.generate`
  # has nothing to ask for; use --mode=sample.
  REQUESTS = ()

  def __init__(self, config, *, apply=None, frozen_apply=None):
    t = config.task
    if len(tuple(t.x_shape)) != 4:
      raise UserError(f'config.task.x_shape must be (T, H, W, C) for the '
                      f'video task, got {tuple(t.x_shape)}.')
    if t.get('data_key', 'video') != 'video':
      raise UserError("The video task reads the batch's 'video' clips; "
                      'remove config.task.data_key.')
    if t.get('latent') or t.get('flatten'):
      raise UserError('The video task works in pixel space (no '
                      'config.task.latent / flatten yet).')
    super().__init__(config, apply=apply, frozen_apply=frozen_apply)
    self.data_key = 'video'
    self.first_frame = bool(t.get('first_frame', False))
    self.frame_dropout = float(t.get('frame_dropout', 0.0))
    if not 0.0 <= self.frame_dropout <= 1.0:
      raise UserError('config.task.frame_dropout must be in [0, 1], got '
                      f'{self.frame_dropout}.')
    self.config = config
    self.batch_keys = ('video',) + (('label',) if self.num_classes else ())
    self.block_frames = t.get('block_frames')
    if self.block_frames is not None:
      self.block_frames = int(self.block_frames)
      model_bf = dict(config.model).get('block_frames')
      if model_bf != self.block_frames:
        raise UserError(
            f'config.task.block_frames={self.block_frames} needs a '
            f'block-causal model with the same blocks; set '
            f'config.model.block_frames={self.block_frames} (got '
            f'{model_bf}).')
      if self.x_shape[0] % self.block_frames:
        raise UserError(f'block_frames {self.block_frames} must divide the '
                        f'{self.x_shape[0]} frames of config.task.x_shape.')
      if self.learned_variance is not None or self.precond != 'none':
        raise UserError('Block-causal (diffusion forcing) training supports '
                        'no learned variance or input preconditioning.')

  # -- Batch -> (x0, cond) ----------------------------------------------------

  def clip(self, batch: dict) -> jax.Array:
    return video_clip(batch, self.x_shape, 'video')

  def to_x0(self, batch: dict, frozen=None, key=None) -> jax.Array:
    del frozen, key
    return self.clip(batch)

  def from_x(self, x: jax.Array) -> jax.Array:
    return x.reshape((x.shape[0],) + self.x_shape)

  def cond(self, batch: dict, key: jax.Array | None) -> dict:
    k_label = k_frame = None
    if key is not None:
      k_label, k_frame = jax.random.split(key)
    out = super().cond(batch, k_label)
    if self.first_frame:
      ff = self.clip(batch)[:, 0]
      if k_frame is not None and self.frame_dropout > 0:
        drop = jax.random.bernoulli(k_frame, self.frame_dropout,
                                    (ff.shape[0],))
        ff = jnp.where(drop[:, None, None, None], 0.0, ff)
      out['first_frame'] = ff
    return out

  # -- Training ---------------------------------------------------------------

  def loss(self, params, frozen, task_state, batch, key):
    """GenerationTask's loss; with block_frames, one t per block."""
    if self.block_frames is None:
      return super().loss(params, frozen, task_state, batch, key)
    k_drop, k_loss, k_model = jax.random.split(key, 3)
    x0 = self.to_x0(batch)
    b, f = x0.shape[0], self.block_frames
    nb = self.x_shape[0] // f
    cond = self.cond(batch, k_drop)
    net = self.network(params, rngs=k_model, train=True)

    def per_block(x_t, t, _):
      out = net(x_t.reshape((b,) + self.x_shape), t.reshape(b, nb), cond)
      return out.reshape(x_t.shape)

    time_state = (task_state or {}).get('time_dist')
    loss, aux = loss_lib.unified_loss(
        per_block, x0=x0.reshape((b * nb, f) + self.x_shape[1:]), cond=None,
        key=k_loss, path=self.path, prediction=self.prediction,
        weighting=self.weighting, time_dist=self.time_dist,
        time_state=time_state)
    return loss, {'mse': aux['mse']}, self.update_state(task_state, aux)

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    spec = {'video': jax.ShapeDtypeStruct((batch_size,) + self.x_shape,
                                          jnp.uint8)}
    if self.num_classes:
      spec['label'] = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    return spec

  # -- Sampling ---------------------------------------------------------------

  def sample_cond(self, spec) -> dict[str, np.ndarray]:
    """Labels cycling through the classes (or {'per_class': m}) and, for
    image-to-video, the first frames of held-out test clips."""
    cond = super().sample_cond(spec)
    if not self.first_frame:
      return cond
    n = (int(spec['per_class']) * max(self.num_classes, 1)
         if isinstance(spec, dict) else int(spec))
    ex = image_cond.heldout_examples(self.config, n)
    cond['first_frame'] = np.asarray(
        preprocess.to_float(np.asarray(ex['video'])[:, 0]), np.float32)
    if self.num_classes and not isinstance(spec, dict):
      cond['label'] = np.asarray(ex['label'], np.int32)  # The clips' own.
    return cond

  def eval_cond(self, batch: dict) -> dict:
    return self.cond(batch, None)

  def sample(self, params, frozen, cond: dict, key: jax.Array, *, n: int,
             guidance: Any = 1.0, **kw) -> jax.Array:
    if self.first_frame and 'first_frame' not in cond:
      raise UserError("Image-to-video sampling needs cond['first_frame'] "
                      '(B, H, W, C) in [-1, 1] (task.sample_cond gives '
                      'held-out ones).')
    x = super().sample(params, frozen, cond, key, n=n, guidance=guidance,
                       **kw)
    if self.first_frame:
      x = x.at[:, 0].set(jnp.asarray(cond['first_frame'], x.dtype))
    return x

  def rollout(self, params, cond: dict, key: jax.Array, *, num_frames: int,
              guidance: Any = 1.0, steps: int | None = None,
              return_state: bool = False, context=None):
    """num_frames frames, block by block with a constant-size state (module
    docstring); returns (B, num_frames, H, W, C) in [-1, 1] (host numpy).

    `context` (B, K, H, W, C) in [-1, 1], K a multiple of block_frames:
    given first frames (video continuation, the physics check's setting);
    they are committed to the state block by block (one t = 0 pass each,
    as generated blocks are) and returned as the first K frames."""
    f = self.block_frames
    if f is None:
      raise UserError('rollout needs a block-causal model and task: set '
                      'config.task.block_frames and config.model.block_frames '
                      '(with attention=linear).')
    if num_frames % f:
      raise UserError(f'num_frames {num_frames} must be a multiple of '
                      f'block_frames {f}.')
    if self.path.name != 'linear' or self.prediction != 'velocity':
      raise UserError('rollout integrates the linear path with velocity '
                      f'prediction; this task has {self.path.name!r} / '
                      f'{self.prediction!r}.')
    if self.first_frame and 'first_frame' not in cond:
      raise UserError("Image-to-video rollout needs cond['first_frame'].")
    cond = {k: jnp.asarray(v) for k, v in cond.items()}
    n = int(next(iter(cond.values())).shape[0]) if cond else 1
    n_ctx = 0
    if context is not None:
      context = jnp.asarray(context, jnp.float32)
      if (context.ndim != 5 or context.shape[0] != n
          or tuple(context.shape[2:]) != self.x_shape[1:]
          or context.shape[1] % f or context.shape[1] > num_frames):
        raise UserError(
            f'rollout context has shape {tuple(context.shape)}; expected '
            f'({n}, K) + {self.x_shape[1:]} with K a multiple of '
            f'block_frames {f} and K <= num_frames {num_frames}.')
      n_ctx = context.shape[1] // f
    steps = int(steps or dict(self.sampler_cfg)['steps'])
    if not hasattr(self, '_rollout_block'):
      self._rollout_block = jax.jit(self._block_fn, static_argnums=(6,))
      self._commit_block = jax.jit(
          lambda p, s, x, c: self.apply(p, x, jnp.zeros((x.shape[0],)), c,
                                        state=s)[1])
    state = self.zero_state(n)
    frames = []
    for i, k in enumerate(jax.random.split(key, num_frames // f)):
      if i < n_ctx:
        x = context[:, i * f:(i + 1) * f]
        state = self._commit_block(params, state, x, cond)
      else:
        x, state = self._rollout_block(params, state, k, cond,
                                       jnp.asarray(guidance, jnp.float32),
                                       jnp.asarray(i == 0), (n, steps))
      frames.append(np.asarray(x))
    out = np.concatenate(frames, axis=1)
    return (out, state) if return_state else out

  def zero_state(self, n: int) -> dict:
    """`VideoDiT.init_state(n)` from the model config (the task holds no
    module): zero sums per layer and head, position 0."""
    m = dict(self.config.model)
    depth, heads, width = int(m['depth']), int(m['heads']), int(m['width'])
    dh = width // heads
    return {'s': jnp.zeros((depth, n, heads, dh, dh), jnp.float32),
            'z': jnp.zeros((depth, n, heads, dh), jnp.float32),
            'pos': jnp.zeros((), jnp.int32)}

  def _block_fn(self, params, state, key, cond, guidance, first, static):
    """One block: (frames (n, F, H, W, C), the state including them)."""
    n, steps = static
    f, shape = self.block_frames, self.x_shape[1:]
    null = dict(cond)
    if self.num_classes:
      null['label'] = jnp.full_like(cond['label'], self.num_classes)

    def velocity(x, t):
      tb = jnp.full((n,), t)
      v, _ = self.apply(params, x, tb, cond, state=state)
      if not self.num_classes:
        return v
      u, _ = self.apply(params, x, tb, null, state=state)
      return u + guidance * (v - u)

    x = heun_block(velocity, jax.random.normal(key, (n, f) + shape), steps)
    if self.first_frame:  # The given frame is frame 0 of the video.
      x = jnp.where(first, x.at[:, 0].set(cond['first_frame']), x)
    x = jnp.clip(x, -1.0, 1.0)
    _, new_state = self.apply(params, x, jnp.zeros((n,)), cond, state=state)
    return x, new_state

  def to_media(self, samples, cond: dict) -> media_lib.Media:
    m = base.array_media(samples, cond, x_shape=self.x_shape,
                         num_classes=self.num_classes)
    if self.first_frame and 'first_frame' in cond:
      m.condition = preprocess.to_uint8(np.asarray(cond['first_frame']))
    return m
