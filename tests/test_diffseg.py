"""DiffSeg on attention whose answer is known, mIoU, k-means, and the
attention capture hook on the project's models."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from visgen import models
from visgen.models import attention
from visgen.segmentation import diffseg


def _truth(res):
  lab = np.zeros((res, res), int)
  lab[: res // 2, : res // 2] = 1
  lab[res // 2:, res // 4: 3 * res // 4] = 2
  return lab


def _segment_attention(lab, noise, rng):
  """Each query attends uniformly to its own segment (plus noise)."""
  flat = lab.ravel()
  same = (flat[:, None] == flat[None, :]).astype(float)
  a = same / same.sum(1, keepdims=True) + noise * rng.random(same.shape)
  return a / a.sum(1, keepdims=True)


def test_aggregate_keeps_a_single_full_resolution_map():
  rng = np.random.default_rng(0)
  a = rng.random((64, 64))
  a /= a.sum(1, keepdims=True)
  np.testing.assert_allclose(diffseg.aggregate([a]), a, atol=1e-12)
  # Heads are averaged; rows of a mixed-resolution aggregate sum to one.
  low = rng.random((2, 16, 16))
  low /= low.sum(-1, keepdims=True)
  out = diffseg.aggregate([a, low])
  assert out.shape == (64, 64)
  np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-12)
  # A constant low-resolution map stays constant after upsampling.
  flat = np.full((16, 16), 1 / 16)
  np.testing.assert_allclose(diffseg.aggregate([flat], out_res=8),
                             1 / 64, atol=1e-12)
  with pytest.raises(ValueError, match='square grid'):
    diffseg.aggregate([np.ones((10, 10))])


def test_segments_recovered_from_attention_that_encodes_them():
  rng = np.random.default_rng(1)
  maps = [_segment_attention(_truth(8), 0.01, rng),
          _segment_attention(_truth(4), 0.01, rng)]
  labels = diffseg.segment(maps, 32, anchors=8, threshold=1.0)
  truth32 = _truth(8).repeat(4, 0).repeat(4, 1)
  assert diffseg.miou(labels, truth32) == 1.0
  assert labels.max() == 2  # three segments, no duplicates left
  # A threshold below every distance merges nothing: over-segmentation.
  over = diffseg.segment(maps, 32, anchors=8, threshold=1e-9, iterations=1)
  assert over.max() + 1 > 3


def test_miou_hungarian():
  t = np.array([[0, 0, 1, 1]] * 4)
  # Labels permuted: still perfect.
  assert diffseg.miou(7 - 3 * t, t) == 1.0
  # One segment covering everything: IoU 1/2 for the matched one, 0 else.
  assert diffseg.miou(np.zeros_like(t), t) == pytest.approx(0.25)
  # Half of segment 1 predicted as a third label.
  p = t.copy()
  p[:, 3] = 5
  assert diffseg.miou(p, t) == pytest.approx((1.0 + 0.5) / 2)


def test_kmeans_baseline_on_flat_colours():
  lab = _truth(16)
  colours = np.array([[120, 120, 120], [220, 40, 40], [50, 80, 230]],
                     np.uint8)
  seg = diffseg.kmeans_segment(colours[lab], 3)
  assert diffseg.miou(seg, lab) == 1.0


@pytest.mark.parametrize('name,kw', [
    ('dit', dict(input_size=8, in_channels=3, patch=2, width=32, depth=2,
                 heads=2, num_classes=0)),
    ('unet', dict(input_size=8, in_channels=3, model_channels=16,
                  channel_mult=(1, 2), num_res_blocks=1,
                  attention_resolutions=(8, 4), num_heads=2,
                  num_classes=0)),
])
def test_capture_returns_every_map_and_changes_nothing(name, kw):
  model = models.get_model(name, rngs=nnx.Rngs(0), **kw)
  graphdef, params = nnx.split(model)
  apply = models.make_apply(graphdef)
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  t = jnp.array([0.3, 0.8])

  @jax.jit
  def run(p):
    with attention.capture() as maps:
      out = apply(p, x, t, {})
    return out, maps

  out, maps = run(params)
  np.testing.assert_array_equal(out, jax.jit(apply)(params, x, t, {}))
  assert maps, 'no attention recorded'
  for m in maps:
    assert m.shape[:2] == (2, 2) and m.shape[2] == m.shape[3]
    np.testing.assert_allclose(np.asarray(m).sum(-1), 1.0, atol=1e-5)
  if name == 'dit':
    assert [m.shape[2] for m in maps] == [16, 16]
  else:  # 8x8 and 4x4 blocks on the way down and up, and the middle.
    assert {m.shape[2] for m in maps} == {64, 16}
  assert not attention._CAPTURING  # pylint: disable=protected-access


def test_feature_capture_names_every_block_and_changes_nothing():
  from visgen.models import layers  # pylint: disable=g-import-not-at-top

  cases = [
      ('dit', dict(input_size=8, in_channels=3, patch=2, width=32, depth=2,
                   heads=2, num_classes=0), (2, 8, 8, 3),
       {'block0': (2, 16, 32), 'block1': (2, 16, 32)}),
      ('unet', dict(input_size=8, in_channels=3, model_channels=16,
                    channel_mult=(1, 2), num_res_blocks=1,
                    attention_resolutions=(), num_heads=2, num_classes=0),
       (2, 8, 8, 3), None),
      ('mlp', dict(dim=6, width=16, depth=3, num_classes=0), (2, 6),
       {f'block{i}': (2, 16) for i in range(3)}),
  ]
  for name, kw, shape, want in cases:
    model = models.get_model(name, rngs=nnx.Rngs(0), **kw)
    graphdef, params = nnx.split(model)
    apply = models.make_apply(graphdef)
    x = jax.random.normal(jax.random.key(1), shape)
    t = jnp.array([0.3, 0.8])
    with layers.capture_features() as feats:
      out = apply(params, x, t, {})
    np.testing.assert_array_equal(out, apply(params, x, t, {}))
    got = {k: v.shape for k, v in feats.items()}
    if want is None:  # U-Net: every level down and up, and the middle.
      assert {'down0', 'mid', 'up0'} <= set(got), got
      assert all(len(s) == 4 and s[0] == 2 for s in got.values()), got
    else:
      assert got == want, (name, got)
