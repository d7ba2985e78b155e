"""Action-conditioned world model: next-block generation on `shapes_world`.

  config.data  = dict(name='shapes_world', resolution=16, num_frames=8,
                      persistence=0.5, ...)
  config.task  = dict(name='world_model', x_shape=(8, 16, 16, 3),
                      block_frames=1, num_actions=5, action_dropout=0.1,
                      prev_frame=True)
  config.model = dict(name='video_dit', block_frames=1, num_actions=5,
                      prev_frame=True, attention='linear', ...)

A `VideoTask` (block-causal linear-attention video DiT trained with one
noise level per block: diffusion forcing) whose frames are conditioned on
actions. The data's `actions` (B, T - 1) (actions[t] moves frame t to
t + 1) become per-frame actions (B, T): the action taken just before each
frame, the null action `num_actions` for frame 0 (nothing known before it).
Each per-frame action is replaced by the null action with probability
`action_dropout`, independently per example and frame (classifier-free
guidance on the actions). With `prev_frame` every frame of block k also
sees the last (clean) frame of block k - 1 concatenated to its channels
(zeros for block 0): the camera motion is then a short-range copy the
network learns fast, while the linear-attention state carries the longer
past.

Generation (`rollout`, `WorldSession`): real context frames (a test
world's first block(s)) are committed to the constant-size state at t = 0;
then each new block is integrated from t = 1 to 0 (Heun on the linear
path's velocity, the sampler config's steps; CFG u + s (c - u) with the
null action for the block's frames as u, the same past state for both) and
committed. `sample` (training grids, --mode=sample) is this rollout as one
`lax.scan` from the first block of held-out clips under their own actions.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from visgen import media as media_lib
from visgen.data import preprocess
from visgen.objectives import loss as loss_lib
from visgen.tasks import base
from visgen.tasks import image_cond
from visgen.tasks import video
from visgen.validate import UserError


class WorldModelTask(video.VideoTask):
  """Per-frame action conditioning on the block-causal video task."""

  # Conditions are context frames and actions (`visgen.world`), not labels.
  REQUESTS = ()

  def __init__(self, config, *, apply=None, frozen_apply=None):
    t, m = config.task, dict(config.model)
    if int(t.get('num_classes', 0)) or t.get('first_frame'):
      raise UserError('The world_model task is conditioned on actions and '
                      'context frames; remove config.task.num_classes / '
                      'first_frame.')
    if t.get('block_frames') is None:
      raise UserError('The world_model task generates block by block: set '
                      'config.task.block_frames and config.model.'
                      'block_frames (e.g. 1) with attention=linear.')
    super().__init__(config, apply=apply, frozen_apply=frozen_apply)
    self.num_actions = int(t.get('num_actions', 5))
    self.action_dropout = float(t.get('action_dropout', 0.1))
    self.prev_frame = bool(t.get('prev_frame', True))
    if not 0.0 <= self.action_dropout <= 1.0:
      raise UserError('config.task.action_dropout must be in [0, 1], got '
                      f'{self.action_dropout}.')
    if int(m.get('num_actions', 0)) != self.num_actions:
      raise UserError(f'config.model.num_actions={m.get("num_actions")} '
                      f'must equal config.task.num_actions='
                      f'{self.num_actions}.')
    if bool(m.get('prev_frame', False)) != self.prev_frame:
      raise UserError('config.model.prev_frame and config.task.prev_frame '
                      'must agree.')
    if m.get('attention', 'linear') != 'linear':
      raise UserError('The world model rolls out with the constant-size '
                      'state of linear attention: set '
                      'config.model.attention=linear.')
    if self.path.name != 'linear' or self.prediction != 'velocity':
      raise UserError('The world model integrates the linear path with '
                      'velocity prediction; set config.path.name=linear and '
                      'config.prediction=velocity.')
    self.null_action = self.num_actions
    self.batch_keys = ('video', 'actions')
    sf = dict(t.get('self_forcing') or {})
    unknown = set(sf) - {'weight', 'examples', 'steps', 'guidance'}
    if unknown:
      raise UserError(f'config.task.self_forcing has unknown keys '
                      f'{sorted(unknown)}; valid: weight, examples, steps, '
                      'guidance.')
    self.self_forcing = None
    if sf and float(sf.get('weight', 1.0)) > 0:
      self.self_forcing = dict(
          weight=float(sf.get('weight', 1.0)),
          examples=int(sf.get('examples', 4)), steps=int(sf.get('steps', 2)),
          guidance=float(sf.get('guidance', dict(self.sampler_cfg).get(
              'cfg_scale', 1.0))))
      if self.x_shape[0] // self.block_frames < 2:
        raise UserError('Self-forcing needs clips of at least two blocks.')
      if self.time_dist.stateful:
        raise UserError('Self-forcing supports stateless time '
                        'distributions only (not importance sampling).')
      if self.self_forcing['examples'] < 1 or self.self_forcing['steps'] < 1:
        raise UserError('config.task.self_forcing examples and steps must '
                        'be >= 1.')

  # -- Batch -> (x0, cond) ----------------------------------------------------

  def frame_actions(self, actions: jax.Array) -> jax.Array:
    """(B, T - 1) transitions -> (B, T) the action before each frame
    (the null action before frame 0)."""
    a = jnp.asarray(actions, jnp.int32)
    if a.shape[1:] != (self.x_shape[0] - 1,):
      raise UserError(f"batch['actions'] has shape {tuple(a.shape)}, "
                      f'expected (B, {self.x_shape[0] - 1}) for '
                      f'{self.x_shape[0]}-frame clips.')
    null = jnp.full((a.shape[0], 1), self.null_action, jnp.int32)
    return jnp.concatenate([null, a], axis=1)

  def prev_frames(self, clip: jax.Array) -> jax.Array:
    """(B, T, H, W, C): for every frame of block k, the last frame of block
    k - 1 (zeros for block 0)."""
    f = self.block_frames
    last = clip[:, f - 1::f]
    prev = jnp.concatenate([jnp.zeros_like(last[:, :1]), last[:, :-1]], 1)
    return jnp.repeat(prev, f, axis=1)

  def cond(self, batch: dict, key: jax.Array | None) -> dict:
    a = self.frame_actions(batch['actions'])
    if key is not None and self.action_dropout > 0:
      drop = jax.random.bernoulli(key, self.action_dropout, a.shape)
      a = jnp.where(drop, self.null_action, a)
    out = {'actions': a}
    if self.prev_frame:
      out['prev_frames'] = self.prev_frames(self.clip(batch))
    return out

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {'video': jax.ShapeDtypeStruct((batch_size,) + self.x_shape,
                                          jnp.uint8),
            'actions': jax.ShapeDtypeStruct(
                (batch_size, self.x_shape[0] - 1), jnp.int32)}

  # -- Training: diffusion forcing (+ self-forcing) ---------------------------

  def loss(self, params, frozen, task_state, batch, key):
    """VideoTask's diffusion-forcing loss; with `config.task.self_forcing`
    plus weight * `self_forced_loss` on the batch's first clips."""
    loss, aux, task_state = super().loss(params, frozen, task_state, batch,
                                         key)
    if self.self_forcing is None:
      return loss, aux, task_state
    sf_loss, sf_mse = self.self_forced_loss(params, batch,
                                            jax.random.fold_in(key, 17))
    aux = dict(aux, sf_mse=sf_mse)
    return loss + self.self_forcing['weight'] * sf_loss, aux, task_state

  def self_forced_loss(self, params, batch, key):
    """Training on the model's own rollouts (Self Forcing, Huang et al.
    2025, with a ground-truth target instead of a distribution loss).

    The first m = `examples` clips are rolled out by the model itself from
    their real first block under their real actions, exactly as at
    inference (`rollout_scan`: `steps` Heun steps per block, classifier-free
    guidance at `guidance`, each block committed at t = 0), with the
    parameters behind a stop-gradient. For each clip one target block c in
    1 .. nb - 1 is drawn; the network sees the GENERATED blocks < c clean
    (t = 0, and the generated last frame of block c - 1 as its previous
    frame), block c noised from the REAL block at the loss's t, and the
    loss is the unified loss on block c against the real block: the world
    seen after the commanded actions. The model so learns to continue its
    own, imperfect history towards the true views (the train-test gap of
    teacher-forced diffusion forcing). Blocks after c do not reach block c
    (block-causal attention; each frame's Mix-FFN is per frame).

    Returns (scalar loss, per-example mse)."""
    sf = self.self_forcing
    f = self.block_frames
    n_frames = self.x_shape[0]
    nb = n_frames // f
    clip = self.clip(batch)
    m = min(sf['examples'], clip.shape[0])
    clip = clip[:m]
    acts = self.frame_actions(batch['actions'])[:m]
    k_roll, k_c, k_drop, k_loss, k_model = jax.random.split(key, 5)
    gen = self.rollout_scan(jax.lax.stop_gradient(params), clip[:, :f],
                            acts[:, :f], acts[:, f:], k_roll,
                            jnp.float32(sf['guidance']), sf['steps'])
    gen = jax.lax.stop_gradient(gen)
    c = jax.random.randint(k_c, (m,), 1, nb)
    a = acts
    if self.action_dropout > 0:
      drop = jax.random.bernoulli(k_drop, self.action_dropout, a.shape)
      a = jnp.where(drop, self.null_action, a)
    x0_c = clip.reshape((m, nb, f) + self.x_shape[1:])[jnp.arange(m), c]
    net = self.network(params, rngs=k_model, train=True)
    loss, aux = loss_lib.unified_loss(
        lambda x_t, t, _: self.predict_after_history(net, gen, a, c, x_t, t),
        x0=x0_c, cond=None, key=k_loss, path=self.path,
        prediction=self.prediction, weighting=self.weighting,
        time_dist=self.time_dist)
    return loss, aux['mse']

  def predict_after_history(self, net, history, actions, c, x_t, t):
    """The network's prediction for block c (per example, (m,)) at time t
    (m,) from x_t (m, F, H, W, C), given the clean `history` (m, T, H, W,
    C) before block c (later frames are ignored) and per-frame `actions`
    (m, T): one block-causal forward with the past at t = 0."""
    f, n_frames = self.block_frames, self.x_shape[0]
    nb, m = n_frames // f, x_t.shape[0]
    blk = jnp.arange(n_frames) // f                         # frame -> block
    past = (blk[None] < c[:, None])[..., None, None, None]  # (m, T, 1, 1, 1)
    here = (blk[None] == c[:, None])[..., None, None, None]
    x_in = jnp.where(here, jnp.tile(x_t, (1, nb, 1, 1, 1)),
                     jnp.where(past, history, 0.0))
    bidx = jnp.arange(nb)[None]
    t_blocks = jnp.where(bidx < c[:, None], 0.0,
                         jnp.where(bidx == c[:, None], t[:, None], 1.0))
    cond = {'actions': actions}
    if self.prev_frame:
      cond['prev_frames'] = self.prev_frames(jnp.where(past, history, 0.0))
    out = net(x_in, t_blocks, cond)
    return out.reshape((m, nb, f) + self.x_shape[1:])[jnp.arange(m), c]

  # -- One block of the rollout (pure, jittable) ------------------------------

  def block_cond(self, prev_last, actions_block) -> dict:
    """The model's cond for one block: per-frame actions (n, F) and the
    previous block's last frame (n, H, W, C) as every frame's context."""
    a = jnp.asarray(actions_block, jnp.int32)
    out = {'actions': a}
    if self.prev_frame:
      out['prev_frames'] = jnp.broadcast_to(
          prev_last[:, None], (a.shape[0], a.shape[1]) + prev_last.shape[1:])
    return out

  def commit_block(self, params, state, prev_last, frames, actions_block):
    """The state including a finished block (its clean frames at t = 0)."""
    n = frames.shape[0]
    _, new_state = self.apply(params, frames, jnp.zeros((n,)),
                              self.block_cond(prev_last, actions_block),
                              state=state)
    return new_state

  def generate_block(self, params, state, prev_last, actions_block, key,
                     guidance, steps: int):
    """(frames (n, F, H, W, C) in [-1, 1], the state including them)."""
    n, f = actions_block.shape
    cond = self.block_cond(prev_last, actions_block)
    null = dict(cond, actions=jnp.full_like(cond['actions'],
                                            self.null_action))

    def velocity(x, t):
      tb = jnp.full((n,), t)
      v, _ = self.apply(params, x, tb, cond, state=state)
      u, _ = self.apply(params, x, tb, null, state=state)
      return u + guidance * (v - u)

    x = video.heun_block(velocity, jax.random.normal(
        key, (n, f) + self.x_shape[1:]), steps)
    x = jnp.clip(x, -1.0, 1.0)
    return x, self.commit_block(params, state, prev_last, x, actions_block)

  def rollout_scan(self, params, context, context_actions, actions, key,
                   guidance, steps: int):
    """Context (n, Tc, H, W, C) in [-1, 1] with its per-frame actions
    (n, Tc), then actions.shape[1] generated frames under per-frame
    `actions` (n, K), as one jittable scan; returns (n, Tc + K, ...)."""
    f, n = self.block_frames, context.shape[0]
    tc, k = context.shape[1], actions.shape[1]
    if tc % f or k % f or tc == 0:
      raise UserError(f'Context ({tc} frames) and generated frames ({k}) '
                      f'must be non-zero multiples of block_frames {f}.')
    blocks = lambda a: jnp.swapaxes(
        a.reshape((n, a.shape[1] // f, f) + a.shape[2:]), 0, 1)

    def commit(carry, inp):
      state, prev = carry
      frames, acts = inp
      state = self.commit_block(params, state, prev, frames, acts)
      return (state, frames[:, -1]), None

    carry = (self.zero_state(n), jnp.zeros_like(context[:, 0]))
    carry, _ = jax.lax.scan(commit, carry,
                            (blocks(context), blocks(context_actions)))

    def gen(carry, inp):
      state, prev = carry
      acts, k_block = inp
      x, state = self.generate_block(params, state, prev, acts, k_block,
                                     guidance, steps)
      return (state, x[:, -1]), x

    keys = jax.random.split(key, k // f)
    _, xs = jax.lax.scan(gen, carry, (blocks(actions), keys))
    xs = jnp.swapaxes(xs, 0, 1).reshape((n, k) + context.shape[2:])
    return jnp.concatenate([context, xs], axis=1)

  # -- Sampling (grids, --mode=sample) ----------------------------------------

  def sample_cond(self, spec) -> dict[str, np.ndarray]:
    """The first block and the per-frame actions of held-out test clips."""
    n = int(spec['per_class']) if isinstance(spec, dict) else int(spec)
    ex = image_cond.heldout_examples(self.config, n)
    return self.eval_cond(ex)

  def eval_cond(self, batch: dict) -> dict:
    clip = preprocess.to_float(np.asarray(batch['video']))
    return {'context': np.asarray(clip[:, :self.block_frames], np.float32),
            'actions': np.asarray(self.frame_actions(batch['actions']),
                                  np.int32)}

  def sample(self, params, frozen, cond: dict, key: jax.Array, *, n: int,
             guidance: Any = 1.0, **kw) -> jax.Array:
    """Clips of x_shape: the given first block, then the rest generated
    under the clip's own actions."""
    del frozen, kw
    if 'context' not in cond or 'actions' not in cond:
      raise UserError("World-model sampling needs cond['context'] (n, F, H, "
                      "W, C) and cond['actions'] (n, T); task.sample_cond "
                      'gives held-out ones.')
    f = self.block_frames
    acts = jnp.asarray(cond['actions'], jnp.int32)
    steps = int(dict(self.sampler_cfg)['steps'])
    x = self.rollout_scan(params, jnp.asarray(cond['context'])[:n],
                          acts[:n, :f], acts[:n, f:], key,
                          jnp.asarray(guidance, jnp.float32), steps)
    return x

  def rollout(self, params, cond: dict, key: jax.Array, *, num_frames: int,
              guidance: Any = 1.0, steps: int | None = None,
              return_state: bool = False):
    raise UserError('The world model rolls out under actions: use '
                    'visgen.tasks.world_model.WorldSession (or '
                    'task.rollout_scan).')

  def to_media(self, samples, cond: dict) -> media_lib.Media:
    return base.array_media(samples, cond, x_shape=self.x_shape)


class WorldSession:
  """An interactive rollout on the host: the constant-size state, the last
  frame, and one jitted program per block (the same for every block, so a
  session can run for ever in constant memory).

    s = WorldSession(task, params, context, context_actions, seed=0)
    frames = s.act([4, 4, 1])   # (n, 3, H, W, C) in [-1, 1], numpy

  `context` (n, Tc, H, W, C) in [-1, 1] and its per-frame actions (n, Tc)
  (null before frame 0: `task.frame_actions`), Tc a multiple of the block.
  `act` takes a multiple of block_frames actions (the same for every
  sample of the batch, or (n, K)).
  """

  def __init__(self, task: WorldModelTask, params, context, context_actions,
               *, seed: int = 0, guidance: float | None = None,
               steps: int | None = None):
    self.task, self.params = task, params
    context = jnp.asarray(context, jnp.float32)
    context_actions = jnp.asarray(context_actions, jnp.int32)
    f = task.block_frames
    self.n = int(context.shape[0])
    if context.ndim != 5 or context.shape[1] % f or context.shape[1] == 0:
      raise UserError(f'The context must be (n, Tc, H, W, C) with Tc a '
                      f'non-zero multiple of block_frames {f}; got '
                      f'{tuple(context.shape)}.')
    cfg = dict(task.sampler_cfg)
    self.guidance = jnp.float32(cfg.get('cfg_scale', 1.0)
                                if guidance is None else guidance)
    self.steps = int(steps or cfg['steps'])
    self._key = jax.random.key(seed)
    # One compile per task and shape, shared by every session of the task.
    if not hasattr(task, '_session_jits'):
      task._session_jits = (  # pylint: disable=protected-access
          jax.jit(task.commit_block),
          jax.jit(task.generate_block, static_argnums=(6,)))
    # pylint: disable-next=protected-access
    self._commit, self._gen = task._session_jits
    self.state = task.zero_state(self.n)
    self.prev = jnp.zeros_like(context[:, 0])
    for i in range(0, context.shape[1], f):
      self.state = self._commit(params, self.state, self.prev,
                                context[:, i:i + f],
                                context_actions[:, i:i + f])
      self.prev = context[:, i + f - 1]
    self.frames_done = int(context.shape[1])
    self.last = np.asarray(self.prev)

  def act(self, actions) -> np.ndarray:
    """Generates one frame per action; returns them (n, K, H, W, C)."""
    a = np.asarray(actions, np.int32)
    a = np.broadcast_to(a, (self.n, a.shape[-1])) if a.ndim == 1 else a
    f = self.task.block_frames
    if a.shape[1] % f:
      raise UserError(f'{a.shape[1]} actions do not fill blocks of '
                      f'{f} frames; give a multiple of {f}.')
    if np.any(a < 0) or np.any(a > self.task.num_actions):
      raise UserError(f'Actions must be in 0..{self.task.num_actions} '
                      f'({self.task.num_actions} = null).')
    out = []
    for i in range(0, a.shape[1], f):
      self._key, k = jax.random.split(self._key)
      x, self.state = self._gen(self.params, self.state, self.prev,
                                jnp.asarray(a[:, i:i + f]), k,
                                self.guidance, self.steps)
      self.prev = x[:, -1]
      out.append(np.asarray(x))
    self.frames_done += a.shape[1]
    if out:
      self.last = np.asarray(self.prev)
      return np.concatenate(out, axis=1)
    return np.zeros((self.n, 0) + self.task.x_shape[1:], np.float32)
