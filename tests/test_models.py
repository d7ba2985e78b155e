"""Tests for the MLP and DiT models and the functional boundary."""

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest

from visgen import models
from visgen import sharding
from visgen.models import dit as dit_lib

TINY = dict(input_size=8, in_channels=3, width=32, depth=2, heads=2,
            num_classes=10)


def _inputs(b=2, s=8):
  x = jax.random.normal(jax.random.key(1), (b, s, s, 3))
  t = jnp.linspace(0.1, 0.9, b)
  return x, t, {'label': jnp.arange(b, dtype=jnp.int32)}


def _randomize(model, scale=0.05):
  """Moves every zero-initialised weight off zero so outputs are nontrivial."""
  graphdef, params = models.split_model(model)
  keys = iter(jax.random.split(jax.random.key(7), len(jax.tree.leaves(params))))
  params = jax.tree.map(
      lambda p: p + scale * jax.random.normal(next(keys), p.shape), params)
  return nnx.merge(graphdef, params)


def test_mlp_shape_and_label_effect():
  m = models.get_model('mlp', rngs=nnx.Rngs(0), dim=2, width=16, depth=2,
                       num_classes=3)
  x, t = jnp.ones((4, 2)), jnp.full((4,), 0.3)
  y0 = m(x, t, {'label': jnp.array([0, 0, 0, 0])})
  y3 = m(x, t, {'label': jnp.array([3, 3, 3, 3])})  # the null class row
  assert y0.shape == (4, 2)
  assert m.y_embed.table.shape == (4, 16)
  assert not np.allclose(y0, y3)
  assert m.cond_keys == ('label',)


@pytest.mark.parametrize('patch', [2, 4, 8])
def test_dit_shapes_and_zero_init(patch):
  m = models.get_model('dit', rngs=nnx.Rngs(0), patch=patch, **TINY)
  x, t, cond = _inputs()
  out = m(x, t, cond)
  assert out.shape == x.shape
  # adaLN-Zero: zero modulation and zero final layer give exactly 0.
  assert np.array_equal(np.asarray(out), np.zeros(x.shape))
  # Null class row for classifier-free guidance.
  assert m.y_embed.table.shape == (TINY['num_classes'] + 1, TINY['width'])


def test_dit_variants_and_learned_sigma():
  m = models.get_model('dit', rngs=nnx.Rngs(0), variant='S', patch=8,
                       input_size=8, learn_sigma=True, num_classes=0)
  assert (m.width, len(m.blocks)) == (384, 12)
  assert m.blocks[0].attn.heads == 6
  x, t, _ = _inputs()
  assert m(x, t, {}).shape == (2, 8, 8, 6)
  for name, (w, d, h) in dict(B=(768, 12, 12), L=(1024, 24, 16),
                              XL=(1152, 28, 16)).items():
    v = dit_lib.VARIANTS[name]
    assert (v.width, v.depth, v.heads) == (w, d, h)


def test_registry_errors():
  # Importing visgen.models alone gives every model (no registration by
  # import side effects elsewhere).
  assert models.MODELS.names() == [
      'autoencoder_kl', 'bert_text', 'clip_text', 'controlnet', 'dit',
      'instruct_unet', 'mlp', 'mmdit', 'noisy_classifier', 'pixart',
      'scene_text', 'unet', 'video_autoencoder', 'video_dit']
  with pytest.raises(ValueError, match='Valid choices: autoencoder_kl, .*, dit, .*, video_dit\.'):
    models.get_model('ditt', rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="unknown arguments \\['widht'\\]"):
    models.get_model('dit', rngs=nnx.Rngs(0), widht=3)
  m = models.get_model('dit', rngs=nnx.Rngs(0), patch=4, **TINY)
  x, t, _ = _inputs()
  with pytest.raises(ValueError, match="'label'"):
    m(x, t, {})


def test_pos_embed_closed_form():
  emb = dit_lib.pos_embed_2d(8, 2, 3)
  # Token (row 1, col 2): first half encodes the column, second the row.
  np.testing.assert_allclose(emb[5, :2], np.sin([2.0, 2.0 / 100]), rtol=1e-6)
  np.testing.assert_allclose(emb[5, 4:6], np.sin([1.0, 1.0 / 100]), rtol=1e-6)
  np.testing.assert_allclose(emb[5, 6:8], np.cos([1.0, 1.0 / 100]), rtol=1e-6)


def test_attention_maps_and_impls():
  m = _randomize(models.get_model('dit', rngs=nnx.Rngs(0), patch=2, **TINY))
  x, t, cond = _inputs()
  out, maps = m(x, t, cond, return_attn=True)
  assert len(maps) == 2 and maps[0].shape == (2, 2, 16, 16)
  np.testing.assert_allclose(maps[1].sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(m(x, t, cond), out, rtol=1e-6)
  for blk in m.blocks:
    blk.attn.impl = 'dpa'
  np.testing.assert_allclose(m(x, t, cond), out, rtol=1e-4, atol=1e-5)


def test_bf16_compute_keeps_fp32_params_and_tracks_fp32():
  ref = _randomize(models.get_model('dit', rngs=nnx.Rngs(0), patch=4, **TINY))
  _, params = models.split_model(ref)
  m16 = models.get_model('dit', rngs=nnx.Rngs(0), patch=4,
                         dtype=jnp.bfloat16, **TINY)
  graphdef16, _ = models.split_model(m16)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  x, t, cond = _inputs()
  y32 = ref(x, t, cond)
  y16 = nnx.merge(graphdef16, params)(x, t, cond)
  assert y16.dtype == jnp.float32
  err = float(jnp.abs(y16 - y32).max() / jnp.abs(y32).max())
  assert 0 < err < 3e-2  # bf16 really ran, and stays close.


def test_remat_and_functional_apply_match():
  m = _randomize(models.get_model('dit', rngs=nnx.Rngs(0), patch=4, **TINY))
  graphdef, params = models.split_model(m)
  m_r = models.get_model('dit', rngs=nnx.Rngs(0), patch=4, remat=True, **TINY)
  graphdef_r, _ = models.split_model(m_r)
  x, t, cond = _inputs()
  apply, apply_r = models.make_apply(graphdef), models.make_apply(graphdef_r)

  def loss(p, f):
    return jnp.sum(f(p, x, t, cond) ** 2)

  (l0, g0) = jax.jit(jax.value_and_grad(lambda p: loss(p, apply)))(params)
  (l1, g1) = jax.jit(jax.value_and_grad(lambda p: loss(p, apply_r)))(params)
  np.testing.assert_allclose(l0, loss(params, lambda p, *a: m(*a)),
                             rtol=1e-5)
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_logical_axes_and_shardings():
  m = models.get_model('dit', rngs=nnx.Rngs(0), patch=4, **TINY)
  _, params = models.split_model(m)
  axes = models.logical_axes(params)
  assert axes['blocks'][0]['attn']['qkv']['kernel'] == ('embed', 'qkv')
  assert axes['y_embed']['table'] == ('vocab', 'embed')
  mesh = jax.make_mesh((1,), ('fsdp',),
                       axis_types=(jax.sharding.AxisType.Auto,))
  sh = sharding.param_shardings(params, mesh, mlc.ConfigDict(
      dict(rules=[('embed', 'fsdp')])))
  assert (jax.tree.structure(sh) == jax.tree.structure(params))
  spec = sh['blocks'][0]['fc2']['kernel'].get_value().spec
  assert spec == jax.sharding.PartitionSpec(None, 'fsdp')


@pytest.mark.parametrize('ta,tb', [(False, False), (False, True),
                                   (True, False), (True, True)])
def test_bmm_custom_gradient_matches_autodiff(ta, tb):
  from visgen.models import layers  # pylint: disable=g-import-not-at-top
  ka, kb, kg = jax.random.split(jax.random.key(0), 3)
  a = jax.random.normal(ka, (2, 3, 4) if not ta else (2, 4, 3))
  b = jax.random.normal(kb, (2, 4, 5) if not tb else (2, 5, 4))
  g = jax.random.normal(kg, (2, 3, 5))
  op = lambda x, t: jnp.swapaxes(x, -1, -2) if t else x
  ref = jax.grad(lambda a, b: jnp.vdot(op(a, ta) @ op(b, tb), g),
                 argnums=(0, 1))(a, b)
  got = jax.grad(lambda a, b: jnp.vdot(layers.bmm(a, b, jnp.float32, ta, tb),
                                       g), argnums=(0, 1))(a, b)
  for r, x in zip(ref, got):
    np.testing.assert_allclose(x, r, rtol=1e-5, atol=1e-5)
  # bf16 operands: float32 gradients, close to the exact ones.
  got16 = jax.grad(lambda a, b: jnp.vdot(
      layers.bmm(a, b, jnp.bfloat16, ta, tb), g), argnums=(0, 1))(a, b)
  for r, x in zip(ref, got16):
    assert x.dtype == jnp.float32
    np.testing.assert_allclose(x, r, rtol=0.05, atol=0.1)
