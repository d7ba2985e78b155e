"""Digits feature net, ADM-format CLI round trip and the in-loop evaluator.

The digits net is trained once per session into a temporary $VISGEN_CACHE
(what CI does on first use), so these tests also check that training works.
"""

import json
import os

import jax
import numpy as np
import pytest

from visgen import evaluate
from visgen.data import digits
from visgen.evaluators import batch_io
from visgen.evaluators import bits_per_dim
from visgen.evaluators import feature_nets
from visgen.evaluators import in_loop
from visgen.evaluators import make_reference


@pytest.fixture(scope='module', autouse=True)
def _tmp_cache(tmp_path_factory):
  old = os.environ.get('VISGEN_CACHE')
  os.environ['VISGEN_CACHE'] = str(tmp_path_factory.mktemp('cache'))
  feature_nets._LOADED.clear()  # pylint: disable=protected-access
  yield
  feature_nets._LOADED.clear()  # pylint: disable=protected-access
  if old is None:
    del os.environ['VISGEN_CACHE']
  else:
    os.environ['VISGEN_CACHE'] = old


@pytest.mark.usefixtures('full_opt')  # training: faster fully optimised
def test_digits_net_accuracy_and_class_accuracy():
  net = feature_nets.get_feature_net('digits')
  acc = net.meta['test_accuracy']
  assert acc['label@8'] >= 0.95 and acc['label@16'] >= 0.95
  assert os.path.exists(feature_nets.cache_path('digits') + '.npz')
  test = digits.load_digits_split('test', size=16)
  got = feature_nets.class_accuracy(test['image'], test['label'])
  assert got == pytest.approx(acc['label@16'])
  wrong = feature_nets.class_accuracy(test['image'], (test['label'] + 1) % 10)
  assert wrong < 0.05
  # A second instance loads the cached file and computes the same features.
  reloaded = feature_nets.TrainedNet('digits')
  np.testing.assert_array_equal(reloaded(test['image'])['pool'],
                                net(test['image'])['pool'])


def test_streaming_reader_matches_np_load(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (7, 5, 4, 3), np.uint8)
  path = str(tmp_path / 'b.npz')
  batch_io.write_batch(path, images)
  parts = list(batch_io.StreamingImages(path).batches(3))
  assert [p.shape[0] for p in parts] == [3, 3, 1]
  np.testing.assert_array_equal(np.concatenate(parts), images)
  with pytest.raises(ValueError, match='uint8 NHWC'):
    batch_io.write_batch(path, images.astype(np.float32))


def test_reference_stats_belong_to_their_network(tmp_path):
  path = str(tmp_path / 'adm.npz')
  mu, sigma = np.zeros(3), np.eye(3)
  np.savez(path, np.zeros((2, 4, 4, 3), np.uint8), mu=mu, sigma=sigma,
           mu_s=mu, sigma_s=sigma)  # ADM's layout: no feature_net key
  pool, spatial = batch_io.read_reference_stats(path, 'inception')
  np.testing.assert_array_equal(pool.sigma, sigma)
  assert spatial is not None
  assert batch_io.read_reference_stats(path, 'digits') == (None, None)


def test_cli_round_trip_on_digits(tmp_path, capsys):
  ref = str(tmp_path / 'ref.npz')
  make_reference.make_reference(ref, dataset='digits', split='test', size=16)
  with np.load(ref) as f:
    assert f['arr_0'].shape == (297, 16, 16, 1) and f['arr_0'].dtype == np.uint8
    assert str(f['feature_net']) == 'digits' and f['mu'].shape == (128,)
    ref_images = f['arr_0']
  same, out = str(tmp_path / 'same.npz'), str(tmp_path / 'm.json')
  labels = digits.load_digits_split('test', size=16)['label']
  np.savez(same, ref_images, labels)  # arr_1: classes, as visgen.sample
  evaluate.main([ref, same, '--feature-net=digits', f'--out={out}'])
  printed = capsys.readouterr().out
  result = json.load(open(out))
  assert set(evaluate.compare.METRIC_KEYS) <= set(result)
  assert abs(result['fid']) < 1e-6  # precomputed stats vs streamed stats
  assert result['precision'] == 1.0 and result['recall'] == 1.0
  assert result['sfid'] is None and result['ref_stats_precomputed']
  assert result['class_accuracy'] > 0.95
  assert 'digits-FID: ' in printed and '\nFID: ' not in printed
  floor = result['floor']
  assert floor['num_ref'] == 1500 and floor['num_samples'] == 297
  assert 0 < floor['fid'] < 20
  # Blank samples are far from digits: worse than the floor on every metric.
  blank = str(tmp_path / 'blank.npz')
  np.savez(blank, np.zeros_like(ref_images))
  evaluate.main([ref, blank, '--feature-net=digits', f'--out={out}'])
  bad = json.load(open(out))
  assert bad['fid'] > 10 * floor['fid'] and bad['precision'] < 0.05
  assert bad['class_accuracy'] is None


def test_in_loop_evaluator_runs_without_disk():
  test = digits.load_digits_split('test', size=16)
  ev = in_loop.InLoopEvaluator(feature_net='digits', reference='digits:test',
                               image_size=16, num_samples=256,
                               batch_size=128)

  def sample_fn(key, n):
    idx = np.asarray(jax.random.choice(key, 297, (n,), replace=False))
    return test['image'][idx], test['label'][idx]

  m = ev.run(sample_fn, jax.random.key(0))
  assert 'fid' not in m and m['digits_fid'] < 1.0
  assert m['digits_class_accuracy'] > 0.9
  assert m['digits_precision'] > 0.9 and 'digits_fid_floor' in m


def test_bits_per_dim_uniform_is_8_bits():
  # p_Y uniform on the dequantised range [-1, -1 + 256/127.5)^D.
  images = np.random.default_rng(1).integers(0, 256, (5, 4, 4, 1), np.uint8)
  d = 16
  nll_fn = lambda y, key: np.full(y.shape[0], d * np.log(256 / 127.5))
  got = bits_per_dim.bits_per_dim(nll_fn, images, key=jax.random.key(0))
  assert got == pytest.approx(8.0, abs=1e-6)
  y = bits_per_dim.dequantize(images, jax.random.key(1))
  assert float(y.min()) >= -1.0 and float(y.max()) < -1.0 + 256 / 127.5
  # score_sde's convention (scale 128) gives 7 + nll / (D ln 2) on [-1, 1].
  assert float(bits_per_dim.nats_to_bits_per_dim(
      nll_nats=0.0, num_dims=10, scale=128.0)) == pytest.approx(7.0)
