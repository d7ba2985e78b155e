"""The noise-aware classifier model and its task through the one loop."""

import json
import os

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import configs.digits_noisy_classifier as cfg
from visgen import models
from visgen import tasks
from visgen import train
from visgen.classification import noisy_classifier as nc


def config(arg='runlocal', **overrides):
  c = cfg.get_config(arg)
  c.num_grid_samples = 0
  c.log_every = 1
  c.ckpt_every = 1000
  for k, v in overrides.items():
    node = c
    *parents, leaf = k.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


@pytest.mark.parametrize('arch', ['conv', 'mlp'])
def test_model_reads_flat_and_image_inputs_alike(arch):
  m = models.get_model('noisy_classifier', rngs=nnx.Rngs(0), num_classes=4,
                       x_shape=(4, 4, 2), arch=arch, widths=(8, 8), width=16,
                       depth=1)
  x = jax.random.normal(jax.random.key(0), (3, 4, 4, 2))
  t = jnp.asarray([0.1, 0.5, 0.9])
  graphdef, params = models.split_model(m)
  apply = jax.jit(models.make_apply(graphdef))  # one compile, not per op
  out = apply(params, x, t, {})
  assert out.shape == (3, 4)
  np.testing.assert_allclose(apply(params, x.reshape(3, -1), t, {}), out,
                             rtol=1e-5, atol=1e-6)
  # The time input matters (a noise-aware classifier, not a plain one); the
  # residual branches start at zero (ADM), so perturb the weights first.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [
      p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  out = apply(params, x, t, {})
  assert float(jnp.max(jnp.abs(apply(params, x, 1.0 - t, {}) - out))) > 1e-4
  logp = nc.log_prob_fn(apply, params)(
      x, t, {'label': jnp.asarray([0, 1, 3])})
  ref = jax.nn.log_softmax(out, -1)[jnp.arange(3), jnp.asarray([0, 1, 3])]
  np.testing.assert_allclose(logp, ref, rtol=1e-5)


def test_bad_arguments_name_the_fix():
  with pytest.raises(ValueError, match='Valid choices: conv, mlp'):
    nc.NoisyClassifier(num_classes=3, x_shape=(4, 4, 1), arch='vit',
                       rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="arch='mlp'"):
    nc.NoisyClassifier(num_classes=3, x_shape=(16,), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='num_classes'):
    tasks.get_task(config(**{'task.num_classes': 1}))


def test_task_noises_with_the_path_and_clean_variant_does_not():
  task = tasks.get_task(config())
  x0 = jnp.ones((64, 64))
  x_t, t = task.noisy(x0, jax.random.key(0))
  assert t.shape == (64,) and float(t.min()) >= 0 and float(t.max()) <= 1
  alpha = task.path.alpha(t)[:, None]
  sigma = task.path.sigma(t)[:, None]
  eps = (x_t - alpha * x0) / sigma
  assert abs(float(jnp.std(eps)) - 1.0) < 0.05  # x_t = alpha x0 + sigma eps
  clean = tasks.get_task(config(**{'task.clean': True}))
  x_c, t_c = clean.noisy(x0, jax.random.key(0))
  np.testing.assert_array_equal(x_c, x0)
  np.testing.assert_allclose(t_c, clean.path.t_min, rtol=1e-6)


def test_trains_through_the_loop_with_decreasing_loss(tmp_path):
  """python -m visgen.main --config=configs/digits_noisy_classifier.py."""
  # The tiny MLP variant: it learns within 60 steps at batch 64 (the tiny
  # conv net's residual branches start at zero and need longer).
  c = config('runlocal,arch=mlp', **{'total_steps': 60, 'data.batch_size': 64,
                'optim.lr': 3e-3, 'optim.warmup_steps': 5})
  out = train.train_and_evaluate(c, str(tmp_path))
  assert out['steps'] == 60
  with open(os.path.join(tmp_path, 'metrics.jsonl')) as f:
    recs = [json.loads(l) for l in f if '"loss"' in l]
  loss = {r['step']: r['loss'] for r in recs}
  acc = {r['step']: r['accuracy'] for r in recs}
  first = np.mean([loss[s] for s in range(1, 11)])
  last = np.mean([loss[s] for s in range(51, 61)])
  assert first > 2.1  # chance level is log 10 = 2.30
  assert last < first - 0.3, (first, last)
  assert np.mean([acc[s] for s in range(51, 61)]) > 0.3
