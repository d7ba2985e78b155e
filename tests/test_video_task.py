"""The video task: clips -> x0, label and first-frame conditioning with
per-example dropout, image-to-video sampling keeps the given frame, video
media."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from visgen.data import preprocess
from visgen.tasks import base
from visgen.tasks import video
from visgen.validate import UserError


def _config(arg='runlocal=True,first_frame=True'):
  path = os.path.join(os.path.dirname(__file__), '..', 'configs',
                      'video_shapes.py')
  spec = importlib.util.spec_from_file_location('configs.video_shapes', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _batch(b=4):
  rng = np.random.default_rng(0)
  return {'video': jnp.asarray(rng.integers(0, 256, (b, 4, 8, 8, 3)),
                               jnp.uint8),
          'label': jnp.arange(b, dtype=jnp.int32) % 4}


def test_video_task_cond_and_dropout():
  c = _config()
  task = base.check_task(video.VideoTask(c))
  assert task.batch_keys == ('video', 'label')
  spec = task.batch_spec(2)
  assert spec['video'].shape == (2, 4, 8, 8, 3)
  batch = _batch()
  x0 = task.to_x0(batch)
  np.testing.assert_allclose(x0, preprocess.to_float(batch['video']))
  cond = task.eval_cond(batch)
  np.testing.assert_array_equal(cond['label'], batch['label'])
  np.testing.assert_allclose(cond['first_frame'], x0[:, 0])
  task.frame_dropout, task.label_dropout = 1.0, 0.0
  dropped = task.cond(batch, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(dropped['first_frame'], 0.0)
  np.testing.assert_array_equal(dropped['label'], batch['label'])
  # Per example, not per batch: at p = 0.5 some frames stay, some go.
  task.frame_dropout = 0.5
  ff = task.cond(_batch(64), jax.random.PRNGKey(1))['first_frame']
  kept = np.asarray(jnp.abs(ff).reshape(64, -1).max(-1) > 0)
  assert 10 < kept.sum() < 54
  with pytest.raises(UserError, match='x_shape'):
    task.to_x0({'video': batch['video'][:, :3]})


def test_image_to_video_sample_keeps_the_first_frame():
  c = _config()
  # A stand-in network: zero velocity (the sampler returns its noise).
  apply = lambda params, x_t, t, cond, **kw: jnp.zeros_like(x_t)
  task = video.VideoTask(c, apply=apply)
  batch = _batch(2)
  cond = task.eval_cond(batch)
  x = task.sample({}, {}, cond, jax.random.PRNGKey(0), n=2, guidance=2.0)
  assert x.shape == (2, 4, 8, 8, 3)
  np.testing.assert_array_equal(x[:, 0], cond['first_frame'])
  assert float(jnp.abs(x[:, 1:]).mean()) > 0.5  # Noise, not the frame.
  m = task.to_media(np.clip(np.asarray(x), -1, 1), cond)
  assert m.kind == 'video' and m.samples.shape == (2, 4, 8, 8, 3)
  np.testing.assert_array_equal(m.condition, m.samples[:, 0])
  with pytest.raises(UserError, match='first_frame'):
    task.sample({}, {}, {'label': cond['label']}, jax.random.PRNGKey(0),
                 n=2)


def test_block_causal_loss_and_constant_state_rollout():
  from flax import nnx
  from visgen import models
  c = _config()
  assert c.task.block_frames == 2 == c.model.block_frames
  kw = {k: v for k, v in dict(c.model).items() if k != 'name'}
  model = models.get_model('video_dit', rngs=nnx.Rngs(0), **kw)
  graphdef, params = models.split_model(model)
  task = video.VideoTask(c, apply=models.make_apply(graphdef))
  batch = _batch(2)
  loss, aux, _ = jax.jit(task.loss)(params, {}, {}, batch,
                                    jax.random.PRNGKey(0))
  assert np.isfinite(float(loss)) and aux['mse'].shape == (4,)  # 2 x 2 blocks
  cond = task.eval_cond(batch)
  x, state = task.rollout(params, cond, jax.random.PRNGKey(1), num_frames=6,
                          guidance=2.0, steps=2, return_state=True)
  assert x.shape == (2, 6, 8, 8, 3) and np.abs(x).max() <= 1.0
  np.testing.assert_array_equal(x[:, 0], cond['first_frame'])
  assert int(state['pos']) == 3  # Three blocks of one token-frame each.
  assert jax.tree.map(jnp.shape, state) == jax.tree.map(
      jnp.shape, task.zero_state(2))
  with pytest.raises(UserError, match='multiple'):
    task.rollout(params, cond, jax.random.PRNGKey(1), num_frames=5)
  # Continuation of given frames: they are returned and condition the rest.
  ctx = np.asarray(task.clip(batch))[:, :2]
  y, st = task.rollout(params, cond, jax.random.PRNGKey(1), num_frames=6,
                       guidance=2.0, steps=2, return_state=True, context=ctx)
  np.testing.assert_array_equal(y[:, :2], ctx)
  assert int(st['pos']) == 3
  # adaLN-Zero makes the initial network constant: perturb every weight.
  leaves, tdef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
  params = jax.tree.unflatten(tdef, [
      l + 0.1 * jax.random.normal(k, l.shape, l.dtype)
      for l, k in zip(leaves, keys)])
  y = task.rollout(params, cond, jax.random.PRNGKey(1), num_frames=6,
                   guidance=2.0, steps=2, context=ctx)
  y2 = task.rollout(params, cond, jax.random.PRNGKey(1), num_frames=6,
                    guidance=2.0, steps=2, context=-ctx)
  assert np.abs(y2[:, 2:] - y[:, 2:]).max() > 1e-4  # The context is read.
  with pytest.raises(UserError, match='context'):
    task.rollout(params, cond, jax.random.PRNGKey(1), num_frames=6,
                 context=ctx[:, :1])
