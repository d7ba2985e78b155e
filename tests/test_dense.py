"""Dense prediction as generation (issue 14 item 4): the target encodings
round-trip exactly on rendered scenes, the ensembling rules and the metrics
give known values on constructed inputs, bad input fails clearly, and the
runlocal configs train through the project's loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from visgen import builder
from visgen import config_loader
from visgen import tasks
from visgen import train
from visgen.data import shapes
from visgen.evaluators import dense as metrics
from visgen.tasks import dense

CONFIG = 'configs/dense_shapes.py'


@pytest.fixture(scope='module')
def scenes():
  src = shapes.ShapesSource(split='test', resolution=16)
  ex = [src[i] for i in range(40)]
  return {k: np.stack([e[k] for e in ex])
          for k in ('image', 'semantic_mask', 'edges', 'instance_mask')}


def _truth(target, scenes):
  m = scenes[dense.TARGETS[target]][..., 0]
  return (m > 0).astype(np.int32) if target == 'edges' else m


@pytest.mark.parametrize('target', list(dense.TARGETS))
def test_encode_decode_round_trip_is_exact(target, scenes):
  entry = scenes[dense.TARGETS[target]]
  x = dense.encode(target, entry)
  assert x.shape == entry.shape[:-1] + (3,)
  assert x.min() >= -1.0 and x.max() <= 1.0
  np.testing.assert_array_equal(dense.decode(target, x),
                                _truth(target, scenes))
  # The jax encoding (the one inside the train step) is the same map.
  np.testing.assert_allclose(np.asarray(dense.encode(target,
                                                     jnp.asarray(entry))),
                             x, atol=1e-6)
  # Small perturbations decode to the same labels.
  noisy = x + 0.05 * np.random.default_rng(0).standard_normal(x.shape)
  np.testing.assert_array_equal(dense.decode(target, noisy),
                                _truth(target, scenes))


def test_depth_is_the_z_order_rank(scenes):
  ids = scenes['instance_mask'][..., 0]
  for i in range(len(ids)):
    n = len(shapes.ShapesSource(split='test', resolution=16).scene(
        i).objects)
    # Every object is visible: ranks 1..n (bottom..top) all present.
    assert set(np.unique(ids[i])) - {0} == set(range(1, n + 1))


def test_ensemble_rules_on_constructed_samples():
  pal = dense._PALETTE  # pylint: disable=protected-access
  # Semantic: classes per sample at 3 pixels; majority, tie -> lower class.
  cls = np.array([[2, 1, 4], [2, 3, 3], [1, 3, 4], [0, 1, 0]])  # (K=4, 3)
  s = pal[cls][:, None, None]                      # (4, 1, 1, 3, 3)
  # votes per pixel: [2, 2, 1, 0] -> 2; [1, 3, 3, 1] a tie -> 1;
  # [4, 3, 4, 0] -> 4.
  np.testing.assert_array_equal(dense.ensemble('semantic', s)[0, 0],
                                [2, 1, 4])
  # Edges: majority of the K votes; an even split is no edge.
  v = np.array([[1, 1, -1], [1, -1, -1], [-1, 1, 1], [1, -1, 1]], float)
  e = np.repeat(v[:, None, None, :, None], 3, -1)
  np.testing.assert_array_equal(dense.ensemble('edges', e)[0, 0], [1, 0, 0])
  # Depth: the per-pixel median of the rank values.
  ranks = np.array([[0, 3, 1], [1, 3, 2], [3, 0, 2]], float)  # K=3
  d = np.repeat((ranks * 2 / dense.MAX_RANK - 1)[:, None, None, :, None],
                3, -1)
  np.testing.assert_allclose(dense.ensemble('depth', d)[0, 0], [1, 3, 2])
  with pytest.raises(ValueError, match=r'\(K, N, H, W, 3\)'):
    dense.ensemble('depth', d[0])


def test_metrics_on_truth_and_constructed_errors(scenes):
  sem, ids = scenes['semantic_mask'][..., 0], scenes['instance_mask'][..., 0]
  edges = scenes['edges'][..., 0] > 0
  assert metrics.semantic_miou(sem, sem) == 1.0
  assert metrics.edge_f1(edges, edges) == 1.0
  assert metrics.edge_f1(np.zeros_like(edges), edges) == 0.0
  assert metrics.depth_order_accuracy(ids.astype(float), ids) == 1.0
  assert metrics.depth_order_accuracy(np.zeros(ids.shape), ids) == 0.0
  # Reverse the objects' order, keep the background farthest: an image of
  # n objects scores n / (n + n (n - 1) / 2).
  n = ids.reshape(len(ids), -1).max(1)
  rev = np.where(ids > 0, n[:, None, None] + 1 - ids, 0).astype(float)
  want = np.mean(n / (n + n * (n - 1) / 2))
  assert metrics.depth_order_accuracy(rev, ids) == pytest.approx(want)
  assert (n >= 2).any()  # object pairs exist; reversed, all are wrong
  assert metrics.depth_order_accuracy(rev, ids, objects_only=True) == 0.0
  assert metrics.depth_order_accuracy(ids.astype(float), ids,
                                      objects_only=True) == 1.0
  # mIoU by hand: predict background everywhere.
  bg = np.zeros_like(sem)
  classes = [c for c in range(5) if (sem == c).any()]
  want = np.mean([(sem == 0).mean()] + [0.0] * (len(classes) - 1))
  assert metrics.semantic_miou(bg, sem) == pytest.approx(want)


def test_bad_input_names_problem_and_fix():
  with pytest.raises(ValueError, match="Unknown dense target 'normals'.*"
                     'semantic, edges, depth'):
    config_loader.load(f'{CONFIG}:target=normals')
  with pytest.raises(ValueError, match='Unknown dense target'):
    dense.encode('normals', np.zeros((1, 4, 4, 1), np.uint8))
  c = config_loader.load(f'{CONFIG}:runlocal,mode=discriminative')
  c.model.in_channels = 3
  with pytest.raises(ValueError, match='in_channels=5'):
    tasks.get_task(c)
  task = tasks.get_task(config_loader.load(f'{CONFIG}:runlocal'))
  with pytest.raises(ValueError, match=r"condition image cond\['concat'\] "
                     r'has shape \(2, 16, 16, 3\), expected \(2, 8, 8, 3\)'):
    task.sample(None, {}, {'concat': np.zeros((2, 16, 16, 3))},
                jax.random.key(0), n=2)
  with pytest.raises(ValueError, match=r"needs cond\['concat'\]"):
    task.sample(None, {}, {}, jax.random.key(0), n=2)


@pytest.mark.parametrize('mode', dense.MODES)
def test_runlocal_trains_through_the_loop(mode, tmp_path, scenes):
  c = config_loader.load(f'{CONFIG}:runlocal,target=depth,mode={mode}')
  c.total_steps = 2
  c.num_grid_samples = 0
  out = train.train_and_evaluate(c, str(tmp_path))
  assert out['steps'] == 2 and np.isfinite(out['final_loss'])
  b, state, _ = builder.restore(c, str(tmp_path))
  ex = {k: v[:, ::2, ::2] for k, v in scenes.items()}  # 8x8 inputs
  sample = jax.jit(lambda p, f, cond, key: b.task.sample(p, f, cond, key,
                                                        n=40))
  x = sample(builder.first_ema(state), b.frozen.params,
             b.task.eval_cond(ex), jax.random.key(0))
  assert x.shape == (40, 8, 8, 3)
  pred = dense.ensemble('depth', np.asarray(x)[None])
  acc = metrics.depth_order_accuracy(pred, ex['instance_mask'][..., 0])
  assert 0.0 <= acc <= 1.0
