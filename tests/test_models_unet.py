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
  l_b, g_b = grad(params, apply, True, jax.random.key(4))
  l_r, g_r = grad(params, apply_r, True, key)
  assert l_a != l_b  # dropout is active and keyed
  np.testing.assert_allclose(l_a, l_r, rtol=1e-6)
  # Remat recomputes the forward in another fusion order, so gradients
  # agree to fp32 rounding of the whole network's sums: atol is 1e-5 of
  # the largest gradient (measured differences 2e-7 to 1.2e-5 of 3.15,
  # depending on XLA's emitters and optimisation level). A recompute that
  # drew other dropout masks differs by O(1) of that scale (checked).
  atol = 1e-5 * max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g_a))

  def close(ga, gb):
    return all(np.allclose(a, b, rtol=1e-4, atol=atol)
               for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)))

  assert close(g_a, g_r)
  assert not close(g_a, g_b)
  with pytest.raises(ValueError, match='dropout key'):
    m(x, t, cond, train=True)


def test_space_to_depth_round_trip_and_layout():
  x = jnp.arange(2 * 8 * 8 * 3, dtype=jnp.float32).reshape(2, 8, 8, 3)
  s = models.unet.space_to_depth(x, 2)
  assert s.shape == (2, 4, 4, 12)
  # Patch (0, 0) holds pixels (0,0), (0,1), (1,0), (1,1), channels inner.
  np.testing.assert_array_equal(s[0, 0, 0], x[0, :2, :2].reshape(-1))
  np.testing.assert_array_equal(s[1, 2, 3], x[1, 4:6, 6:8].reshape(-1))
  np.testing.assert_array_equal(models.unet.depth_to_space(s, 2), x)


def test_unet_patch_is_per_pixel_and_checks_its_arguments():
  m = models.get_model('unet', rngs=nnx.Rngs(0), patch=2, mid_attention=False,
                       **dict(TINY, attention_resolutions=()))
  # Convs see (4, 4, 12) patches; no attention block anywhere.
  assert m.conv_in.kernel.shape == (3, 3, 12, 16)
  assert m.conv_out.kernel.shape == (3, 3, 16, 12)
  assert not any(isinstance(l, models.unet.AttnBlock) for blk in
                 list(m.down) + list(m.up) + [m.mid] for l in blk)
  graphdef, params = models.split_model(m)
  params = jax.tree.map(lambda p: p + 0.05, params)  # non-zero output layer
  # The same network on pre-patched inputs (input 4x4x12, output 12
  # channels) has the same parameters: the patch model must equal it
  # wrapped in space_to_depth / depth_to_space.
  inner = models.get_model('unet', rngs=nnx.Rngs(1), mid_attention=False,
                           **dict(TINY, input_size=4, in_channels=12,
                                  attention_resolutions=()))
  graphdef_i, params_i = models.split_model(inner)
  assert jax.tree.structure(params_i) == jax.tree.structure(params)
  x, t, cond = _inputs()
  out = jax.jit(models.make_apply(graphdef))(params, x, t, cond)
  ref = models.make_apply(graphdef_i)(
      params, models.unet.space_to_depth(x, 2), t, cond)
  assert out.shape == x.shape
  np.testing.assert_allclose(out, models.unet.depth_to_space(ref, 2),
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='patch must be a positive divisor'):
    models.get_model('unet', rngs=nnx.Rngs(0), patch=3, **TINY)
  with pytest.raises(ValueError, match='input_size/patch = 2'):
    models.get_model('unet', rngs=nnx.Rngs(0), patch=4, **dict(
        TINY, channel_mult=(1, 2, 2)))


def test_unet_position_embedding_is_dits_sincos_after_conv_in():
  """pos_embed=True adds DiT's fixed 2-D sin-cos embedding to conv_in's
  output (no parameters): equal to the plain U-Net whose conv_in adds it."""
  from visgen.models import dit  # pylint: disable=g-import-not-at-top
  kw = dict(input_size=8, in_channels=4, model_channels=16,
            channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
            num_heads=1)
  with_pos = models.get_model('unet', rngs=nnx.Rngs(0), pos_embed=True, **kw)
  plain = models.get_model('unet', rngs=nnx.Rngs(0), **kw)
  assert jax.tree.structure(nnx.state(with_pos, nnx.Param)) == (
      jax.tree.structure(nnx.state(plain, nnx.Param)))
  # Non-zero output layer (it starts at zero) so the outputs can differ.
  for m in (with_pos, plain):
    m.conv_out.kernel.value = jnp.ones_like(m.conv_out.kernel.value) * 0.1
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
  t = jnp.array([0.3, 0.7])
  got = with_pos(x, t)
  assert not np.allclose(got, plain(x, t), atol=1e-3)
  conv_in = plain.conv_in
  emb = jnp.asarray(dit.pos_embed_2d(16, 8, 8).reshape(8, 8, 16))

  class Shifted(nnx.Module):

    def __init__(self, conv):
      self.conv = conv

    def __call__(self, h):
      return self.conv(h) + emb

  plain.conv_in = Shifted(conv_in)
  np.testing.assert_allclose(got, plain(x, t), rtol=1e-5, atol=1e-5)


def test_upsample_is_nearest_resize_bit_for_bit():
  x = jax.random.normal(jax.random.key(0), (2, 3, 5, 4))
  w = jax.random.normal(jax.random.key(1), (2, 6, 10, 4))
  ref = lambda h: jax.image.resize(h, (2, 6, 10, 4), 'nearest')
  np.testing.assert_array_equal(models.unet.upsample_nearest2x(x), ref(x))
  grad = lambda f: jax.grad(lambda h: jnp.sum(f(h) * w))(x)
  # The 2x2 sums of the gradient, added in another order: fp32 rounding.
  np.testing.assert_allclose(grad(models.unet.upsample_nearest2x), grad(ref),
                             rtol=1e-6, atol=1e-6)


def test_group_norm_is_float64_group_statistics():
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (3, 5, 7, 12))
  gn = models.unet.GroupNorm(12, rngs=nnx.Rngs(0), groups=4)
  gn.scale[...] = 1.0 + jnp.arange(12) / 10
  gn.bias[...] = jnp.arange(12) / 20 - 0.3
  xd = np.asarray(x, np.float64).reshape(3, 5, 7, 4, 3)
  mean = xd.mean(axis=(1, 2, 4), keepdims=True)
  var = xd.var(axis=(1, 2, 4), keepdims=True)
  ref = ((xd - mean) / np.sqrt(var + 1e-5)).reshape(3, 5, 7, 12)
  ref = ref * np.asarray(gn.scale[...]) + np.asarray(gn.bias[...])
  np.testing.assert_allclose(gn(x), ref, rtol=1e-5, atol=1e-5)
  # Channels of one group share statistics: not a per-channel norm.
  per_channel = (x - x.mean((1, 2), keepdims=True)) / jnp.sqrt(
      x.var((1, 2), keepdims=True) + 1e-5)
  assert not np.allclose(gn(x), per_channel * gn.scale[...] + gn.bias[...],
                         atol=1e-2)
