"""Bits/dim of a model on the test split, through the training system's
evaluation registry and the core's probability-flow likelihood."""

import math

import jax
import jax.numpy as jnp
import numpy as np

import configs.quickstart as qs
from visgen import builder
from visgen import evaluations


def test_bits_per_dim_evaluation_matches_the_untrained_velocity_field():
  config = qs.get_config('runlocal')
  b = builder.build(config)
  # A fresh model's output layer is not zero, so build params whose network
  # output is exactly 0: the velocity field v = 0 of the linear path maps
  # x_0 to x_1 = x_0, so the NLL is that of N(0, I) at the data.
  params = jax.tree.map(jnp.zeros_like, b.init(jax.random.key(0))['params'])
  out = evaluations.bits_per_dim_metric(b, params, jax.random.key(1),
                                        num_images=20, batch=10, steps=4,
                                        divergence='exact')
  assert out['bits_per_dim_images'] == 20
  source = builder.get_source(config.data, 'test')
  x = np.stack([source[i]['image'] for i in range(20)]).astype(np.float64)
  # E_u[-log N((x + u)/127.5 - 1; 0, I)] per dim, in closed form.
  m = x / 127.5 - 1 + 0.5 / 127.5
  e_y2 = m**2 + 1 / (12 * 127.5**2)
  nll = 0.5 * e_y2 + 0.5 * math.log(2 * math.pi)
  expect = (np.mean(nll) + math.log(127.5)) / math.log(2)
  # Monte Carlo over the dequantisation noise only (20 x 64 values).
  assert abs(out['bits_per_dim'] - expect) < 0.02, (out, expect)


def test_text_to_image_bits_per_dim_is_conditioned_on_each_caption():
  """log p(x | caption) for a pixel text-to-image model: with a zero
  velocity field the closed form above (the caption path runs end to
  end; the divergence of a zero field is 0 for any estimator), and with a
  random network the captions move it."""
  from visgen import config_loader  # pylint: disable=g-import-not-at-top
  config = config_loader.load('configs/t2i_shapes.py:runlocal,latent=False')
  config.prediction = 'velocity'
  b = builder.build(config)
  params = b.init(jax.random.key(0))['params']
  zeros = jax.tree.map(jnp.zeros_like, params)
  batch = next(iter(builder.heldout_batches(b, 'test', batch=8, num=8)))
  key = jax.random.key(1)
  fn = jax.jit(lambda p, bt: b.task.bits_per_dim(
      p, b.frozen.params, bt, key, num_steps=4, divergence='hutchinson'))
  x = np.asarray(batch['image'], np.float64)
  m = x / 127.5 - 1 + 0.5 / 127.5
  nll = 0.5 * (m**2 + 1 / (12 * 127.5**2)) + 0.5 * math.log(2 * math.pi)
  expect = (nll.reshape(8, -1).mean(1) + math.log(127.5)) / math.log(2)
  np.testing.assert_allclose(np.asarray(fn(zeros, batch)), expect, atol=0.05)
  # A random network (the U-Net's last layer starts at zero, so every
  # weight is perturbed): the same images under other captions score
  # differently (the condition reaches the likelihood).
  params = jax.tree.map(lambda p: p + 0.05 * jnp.sin(
      1.7 * jnp.arange(p.size, dtype=p.dtype).reshape(p.shape) + 0.3),
                        params)
  own = np.asarray(fn(params, batch))
  shuffled = dict(batch)
  for k in ('caption_tokens', 'caption_mask'):
    shuffled[k] = np.roll(np.asarray(batch[k]), 1, axis=0)
  assert np.all(np.isfinite(own))
  assert np.max(np.abs(np.asarray(fn(params, shuffled)) - own)) > 1e-4
