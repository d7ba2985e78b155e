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
