"""Tests for the ADM-style U-Net."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from visgen import models

TINY = dict(input_size=8, model_channels=16, channel_mult=(1, 2),
            num_res_blocks=1, attention_resolutions=(4,), num_heads=2,
            num_classes=3)


def _inputs():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  return x, jnp.array([0.2, 0.7]), {'label': jnp.array([1, 3])}


def test_unet_zero_init_shapes_and_null_class():
  m = models.get_model('unet', rngs=nnx.Rngs(0), learn_sigma=True, **TINY)
  x, t, cond = _inputs()
  graphdef, params = models.split_model(m)
  out = jax.jit(models.make_apply(graphdef))(params, x, t, cond)
  assert out.shape == (2, 8, 8, 6)
  assert np.array_equal(np.asarray(out), np.zeros(out.shape))  # zero conv_out
  assert m.y_embed.table.shape == (4, 64)
  assert m.cond_keys == ('label',)
  # One attention block per 4x4 block on the way down and up, plus the middle.
  n_attn = sum(isinstance(l, models.unet.AttnBlock) for blk in
               list(m.down) + list(m.up) + [m.mid] for l in blk)
  assert n_attn == 1 + 2 + 1


def test_unet_dropout_remat_and_apply():
  m = models.get_model('unet', rngs=nnx.Rngs(0), dropout=0.5, **TINY)
  graphdef, params = models.split_model(m)
  # Move the zero-initialised output layers so gradients reach everything.
  params = jax.tree.map(lambda p: p + 0.05, params)
  mr = models.get_model('unet', rngs=nnx.Rngs(0), dropout=0.5, remat=True,
                        **TINY)
  graphdef_r, _ = models.split_model(mr)
  x, t, cond = _inputs()
  apply, apply_r = models.make_apply(graphdef), models.make_apply(graphdef_r)
  key = jax.random.key(3)

  def loss(p, f, train, k):
    return jnp.mean(f(p, x, t, cond, train=train, rngs=k) ** 2)

  grad = jax.jit(jax.value_and_grad(loss), static_argnums=(1, 2))
  l_a, g_a = grad(params, apply, True, key)
  l_b, _ = grad(params, apply, True, jax.random.key(4))
  l_r, g_r = grad(params, apply_r, True, key)
  assert l_a != l_b  # dropout is active and keyed
  np.testing.assert_allclose(l_a, l_r, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g_a), jax.tree.leaves(g_r)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match='dropout key'):
    m(x, t, cond, train=True)
