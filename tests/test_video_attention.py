"""Linear attention (SANA), 3-D RoPE, Mix-FFN and the video DiT's
block-causal rollout with a constant-size state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from visgen.models import functional
from visgen.models import linear_attention as la
from visgen.models import video_dit


def _qkv(seed, b=2, h=2, n=24, d=12):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.standard_normal((b, h, n, d)), jnp.float32)
               for _ in range(3))


@jax.jit
def _attn_cases(q, k, v, angles):
  """(fast, reference) pairs: plain, with RoPE, block-causal with RoPE."""
  n = q.shape[2]
  mask = jnp.asarray(la.block_causal_mask(n, 6))
  return (
      (la.linear_attention(q, k, v),
       la.linear_attention_reference(q, k, v)),
      (la.linear_attention(q, k, v, angles=angles),
       la.linear_attention_reference(q, k, v, angles=angles)),
      (la.linear_attention(q, k, v, angles=angles, block_len=6),
       la.linear_attention_reference(q, k, v, angles=angles, mask=mask)),
  )


def test_linear_attention_matches_quadratic_reference():
  q, k, v = _qkv(0)
  angles = la.rope_3d_angles((4, 2, 3), 12)
  for fast, ref in _attn_cases(q, k, v, angles):
    np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-5)
  # The kernel by hand for one query: relu features, no RoPE, no mask.
  fq, fk = np.maximum(np.asarray(q[0, 0]), 0), np.maximum(np.asarray(k[0, 0]),
                                                          0)
  w = fk @ fq[5]
  expect = (w @ np.asarray(v[0, 0])) / (w.sum() + la.EPS)
  np.testing.assert_allclose(_attn_cases(q, k, v, angles)[0][0][0, 0, 5],
                             expect, rtol=1e-5, atol=1e-6)


def test_block_causal_mask_hides_future_blocks():
  q, k, v = _qkv(1)
  angles = la.rope_3d_angles((4, 2, 3), 12)
  out = _attn_cases(q, k, v, angles)[2][0]
  # Changing the last block's keys/values leaves earlier blocks unchanged.
  v2 = v.at[:, :, 18:].add(5.0)
  k2 = k.at[:, :, 18:].add(1.0)
  out2 = _attn_cases(q, k2, v2, angles)[2][0]
  np.testing.assert_array_equal(out[:, :, :18], out2[:, :, :18])
  assert float(jnp.abs(out[:, :, 18:] - out2[:, :, 18:]).max()) > 0.1


def test_linear_attention_step_equals_block_causal():
  q, k, v = _qkv(2)
  angles = la.rope_3d_angles((4, 2, 3), 12)
  full = _attn_cases(q, k, v, angles)[2][0]
  s = jnp.zeros((2, 2, 12, 12))
  z = jnp.zeros((2, 2, 12))
  outs = []
  for b in range(4):
    sl = slice(6 * b, 6 * b + 6)
    o, s, z = la.linear_attention_step(q[:, :, sl], k[:, :, sl], v[:, :, sl],
                                       s, z, angles=angles[sl])
    outs.append(o)
  np.testing.assert_allclose(jnp.concatenate(outs, 2), full, rtol=1e-5,
                             atol=1e-5)


def test_rope_3d_is_a_relative_rotation():
  dh = 12
  assert sum(la.rope_3d_split(dh)) == dh // 2
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((1, 1, 4 * 3 * 5, dh)), jnp.float32)
  ang = la.rope_3d_angles((4, 3, 5), dh)
  rx = la.apply_rope(x, ang)
  np.testing.assert_allclose(jnp.linalg.norm(rx, axis=-1),
                             jnp.linalg.norm(x, axis=-1), rtol=1e-5)
  # Scores of a fixed q, k placed at positions a and b depend on a - b only:
  # shift both by (dt, dh, dw) = (2, 1, 1).
  grid = (6, 4, 6)
  full = la.rope_3d_angles(grid, dh)
  n = full.shape[0]
  qk = jnp.asarray(rng.standard_normal((2, 1, dh)), jnp.float32)
  rq, rk = np.asarray(la.apply_rope(jnp.broadcast_to(qk, (2, n, dh)), full))
  scores = rq @ rk.T  # The same q and k placed at every position.
  idx = lambda t, h, w: (t * grid[1] + h) * grid[2] + w
  score = lambda a, b: float(scores[a, b])
  s0 = score(idx(0, 0, 1), idx(1, 2, 3))
  s1 = score(idx(2, 1, 2), idx(3, 3, 4))
  assert abs(s0 - s1) < 1e-5
  assert abs(s0 - score(idx(0, 0, 1), idx(2, 2, 3))) > 1e-3  # Not constant.
  # A traced time offset is a shift of the time axis.
  np.testing.assert_allclose(la.rope_3d_angles((2, 4, 6), dh, t_offset=3),
                             full[3 * 24:5 * 24], rtol=1e-6)


def test_mix_ffn_shape_and_locality():
  ffn = la.MixFFN(8, 20, rngs=nnx.Rngs(0))
  graphdef, params = functional.split_model(ffn)
  grid = (2, 5, 5)
  run = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x, grid))
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((50, 8)), jnp.float32)
  # Depthwise 3x3 per frame: a change at frame 0, (2, 2) reaches only its
  # 3x3 neighbourhood in frame 0 (and the two batch rows stay separate).
  y, y2 = run(params, jnp.stack([x, x.at[2 * 5 + 2].add(1.0)]))[:, None]
  assert y.shape == (1, 50, 8)
  changed = np.asarray(jnp.abs(y2 - y).max(-1) > 0)[0].reshape(grid)
  expect = np.zeros(grid, bool)
  expect[0, 1:4, 1:4] = True
  np.testing.assert_array_equal(changed, expect)
  with pytest.raises(ValueError, match='grid'):
    ffn(x[None], (2, 5, 4))


def _random_params(params, seed, scale=0.2):
  """Nonzero weights everywhere (adaLN-Zero starts at an all-zero output)."""
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(tree, [
      jnp.asarray(scale * rng.standard_normal(l.shape), jnp.float32)
      for l in leaves])


@pytest.fixture(scope='module')
def causal_model():
  model = video_dit.VideoDiT(
      rngs=nnx.Rngs(0), num_frames=8, input_size=8, in_channels=3,
      patch=(1, 2, 2), width=48, depth=2, heads=2, num_classes=3,
      first_frame=True, block_frames=2)
  graphdef, params = functional.split_model(model)
  return model, graphdef, _random_params(params, 0)


def test_video_dit_rollout_equals_block_causal_forward(causal_model):
  model, graphdef, params = causal_model
  assert model.cond_keys == ('label', 'first_frame')
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 8, 3)), jnp.float32)
  t = jnp.asarray(rng.uniform(size=(2, 4)), jnp.float32)  # One t per block.
  cond = {'label': jnp.asarray([0, 2]), 'first_frame': x[:, 0]}
  apply = jax.jit(functional.make_apply(graphdef))
  full = apply(params, x, t, cond)
  assert full.shape == x.shape
  step = jax.jit(video_dit.make_step(graphdef))
  state = model.init_state(2)
  sizes = jax.tree.map(jnp.shape, state)
  outs = []
  for b in range(4):
    out, state = step(params, x[:, 2 * b:2 * b + 2], t[:, b], state, cond)
    outs.append(out)
    assert jax.tree.map(jnp.shape, state) == sizes  # Constant-size state.
  assert int(state['pos']) == 8
  inc = jnp.concatenate(outs, 1)
  assert float(jnp.abs(full).max()) > 1.0  # A non-trivial output.
  np.testing.assert_allclose(inc, full, rtol=1e-5, atol=1e-5)
  # Causality: later frames do not change earlier blocks' outputs.
  x2 = x.at[:, 6:].add(1.0)
  full2 = apply(params, x2, t, cond)
  np.testing.assert_allclose(full2[:, :6], full[:, :6], rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(full2[:, 6:] - full[:, 6:]).max()) > 1e-2


@pytest.mark.parametrize('attention', ['linear', 'softmax'])
def test_video_dit_forward_shapes(attention):
  model = video_dit.VideoDiT(
      rngs=nnx.Rngs(1), num_frames=4, input_size=8, in_channels=1,
      patch=(2, 4, 4), width=24, depth=1, heads=2, attention=attention,
      ffn='mix' if attention == 'linear' else 'mlp')
  x = jnp.ones((2, 4, 8, 8, 1))
  graphdef, params = functional.split_model(model)
  out = jax.jit(functional.make_apply(graphdef))(params, x, jnp.full((2,), .5))
  assert out.shape == x.shape
  np.testing.assert_array_equal(out, 0.0)  # adaLN-Zero: zero at init.
  with pytest.raises(ValueError, match='first_frame'):
    video_dit.VideoDiT(rngs=nnx.Rngs(1), num_frames=4, input_size=8,
                       in_channels=1, patch=(2, 4, 4), width=24, depth=1,
                       heads=2, first_frame=True)(x, jnp.zeros(2), {})
  if attention == 'softmax':
    with pytest.raises(ValueError, match='linear'):
      model.step(x, jnp.zeros(2), model.init_state(2))
