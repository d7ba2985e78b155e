"""Video metrics: Fréchet distances on a tiny video net, the oracle tracker
against exact positions, the physics check and input errors."""

import dataclasses
import os

import numpy as np
import pytest

from visgen import validate
from visgen.data import shapes
from visgen.evaluators import video_metrics as vm

# A tiny recipe: trains in seconds; the measured net is the default recipe.
TINY = dataclasses.replace(
    vm.RECIPES['shapes_video'], widths=(8, 8, 8), spatial_strides=(2, 2, 2),
    temporal_strides=(1, 1, 2), feature_dim=16,
    num_train=64, num_test=32, steps=3, batch_size=8)
N = 40


@pytest.fixture(scope='module')
def clips():
  return vm.real_clips('test', N)


@pytest.fixture(scope='module')
def tiny_net(tmp_path_factory):
  old = os.environ.get('VISGEN_CACHE')
  os.environ['VISGEN_CACHE'] = str(tmp_path_factory.mktemp('cache'))
  try:
    net = vm.VideoNet(TINY, batch_size=64)
    assert os.path.exists(net.path + '.npz')
    yield net
  finally:
    if old is None:
      del os.environ['VISGEN_CACHE']
    else:
      os.environ['VISGEN_CACHE'] = old


def _shift(v, d):
  return np.clip(v.astype(np.int32) + d, 0, 255).astype(np.uint8)


def test_fvd_zero_on_itself_and_grows_with_shift(tiny_net, clips):
  v = clips['video']
  assert abs(vm.fvd(v, v, net=tiny_net)) < 1e-6
  small = vm.fvd(_shift(v, 20), v, net=tiny_net)
  large = vm.fvd(_shift(v, 60), v, net=tiny_net)
  assert 0 < small < large
  # Reloaded from the cache: the same features.
  os.environ['VISGEN_CACHE'] = os.path.dirname(
      os.path.dirname(tiny_net.path))
  again = vm.VideoNet(TINY, batch_size=64)
  np.testing.assert_allclose(again(v[:4])['pool'], tiny_net(v[:4])['pool'],
                             rtol=1e-5, atol=1e-6)
  assert set(again.meta['test_accuracy']) == {
      'label', 'motion', 'scene_bits', 'motion_bits'}


def test_fvd_floor_is_train_against_test(tiny_net):
  f = vm.fvd_floor(8, net=tiny_net)
  want = vm.fvd(vm.real_clips('train', 8)['video'],
                vm.real_clips('test', 8)['video'], net=tiny_net)
  assert f == pytest.approx(want) and f > 0
  assert 'fvd_16x8_n8' in tiny_net.meta['floors']


def test_frame_fid_pools_frames(clips):
  proj = np.random.default_rng(0).normal(size=(16 * 16 * 3, 8))
  seen = []

  def net(images):
    seen.append(images.shape)
    return dict(pool=images.reshape(len(images), -1).astype(np.float64)
                @ proj / 255)

  v = clips['video']
  assert abs(vm.frame_fid(v, v, net=net)) < 1e-6
  assert seen[0] == (N * 8, 16, 16, 3)
  assert vm.frame_fid(_shift(v, 40), v, net=net) > 1.0
  # Frames are pooled: any clip length, even different lengths.
  assert vm.frame_fid(v[:, :4], v, net=net) >= 0


def test_targets_match_ground_truth(clips):
  tg = vm.targets(clips, max_speed=2.0)
  big = vm.largest_object(clips['instance_masks'][:, 0, ..., 0])
  np.testing.assert_array_equal(
      tg['label'], clips['objects'][np.arange(N), big, 1])
  assert tg['bits'].shape == (N, vm.NUM_BITS)
  assert set(np.unique(tg['motion'])) <= {0, 1, 2, 3}


def _full_coverage(c):
  out = np.zeros(c['positions'].shape[:3], np.int64)
  for i, t, k in np.ndindex(*out.shape):
    if c['objects'][i, k, 0]:
      sh, col, size = (int(x) for x in c['objects'][i, k, 1:])
      o = shapes.Obj(shape=sh, colour=col, size=size,
                     cx=float(c['positions'][i, t, k, 0]),
                     cy=float(c['positions'][i, t, k, 1]))
      out[i, t, k] = shapes.coverage(o, 16).sum()
  return out


def test_tracker_recovers_true_positions(clips):
  c = clips
  tr = vm.track(c['video'], c['objects'], c['positions'][:, 0])
  vis = vm.true_visible(c['positions'], c['objects'], 16)
  # The rendered visibility is the data's own instance masks.
  masks = c['instance_masks'][..., 0]
  np.testing.assert_array_equal(
      vis, np.stack([(masks == k + 1).sum((2, 3)) for k in range(3)], -1))
  present = c['objects'][:, None, :, 0] == 1
  err = np.linalg.norm(tr['positions'] - c['positions'], axis=-1)
  scored = present & (vis >= vm.MIN_PIXELS)
  assert tr['found'][scored].all()
  assert np.median(err[scored]) < 0.25
  assert np.percentile(err[scored], 95) < 1.0
  # Unoccluded objects of distinct colours: within 0.75 px, every one.
  distinct = np.array([
      len(set(o[o[:, 0] == 1, 2])) == o[:, 0].sum() for o in c['objects']])
  clean = scored & (vis == _full_coverage(c)) & distinct[:, None, None]
  assert clean.sum() > 100 and err[clean].max() < 0.75
  absent = np.broadcast_to(~present, tr['found'].shape)
  assert np.isnan(tr['positions'][absent]).all()


def test_physics_error_real_is_floor_and_broken_motion_is_not(clips):
  c = clips
  real = vm.physics_error(c['video'], c['positions'], context_frames=2,
                          objects=c['objects'], real_videos=c['video'])
  assert real['error_px'] < 0.35 and real['lost_fraction'] < 0.01
  assert real['real_error_px'] == real['error_px']
  assert len(real['error_by_frame_px']) == 6
  assert len(real['bounce_by_frame_px']) == 6
  # Exact bounce physics from the context beats the naive baselines.
  assert real['bounce_error_px'] < real['constant_velocity_error_px']
  assert real['bounce_error_px'] < real['static_error_px']
  for how in ('frozen', 'reversed'):
    bad = vm.physics_error(vm.degrade(c['video'], how, context_frames=2),
                           c['positions'], context_frames=2,
                           objects=c['objects'], real_videos=c['video'])
    assert bad['error_px'] > 5 * real['error_px'], how
    assert bad['real_error_px'] == real['error_px']
    # Baselines come from the truth only.
    assert bad['static_error_px'] == real['static_error_px']
  # Frozen clips are the static baseline, up to the tracker's error.
  frozen = vm.physics_error(vm.degrade(c['video'], 'frozen'),
                            c['positions'], context_frames=2,
                            objects=c['objects'])
  assert abs(frozen['error_px'] - real['static_error_px']) < 0.5
  # Without `objects`: colours read from the context frames, centroids.
  guess = vm.physics_error(c['video'], c['positions'], context_frames=1)
  assert guess['error_px'] < 1.0 and guess['bounce_error_px'] is None
  assert guess['constant_velocity_error_px'] is None  # needs k >= 2
  assert 'real_error_px' not in guess


def test_lost_objects_are_penalised(clips):
  c = clips
  blank = np.array(c['video'])
  blank[:, 2:] = 128  # every object vanishes after the context
  out = vm.physics_error(blank, c['positions'], context_frames=2,
                         objects=c['objects'])
  assert out['lost_fraction'] == 1.0
  assert out['error_px'] == 8.0 == out['lost_penalty_px']
  assert out['error_tracked_px'] is None


def test_bad_inputs_are_user_errors(tiny_net, clips):
  v = clips['video']
  with pytest.raises(validate.UserError, match='uint8'):
    vm.fvd(v.astype(np.float32), v, net=tiny_net)
  with pytest.raises(validate.UserError, match=r'x\[None\]'):
    vm.frame_fid(v[0], v, net=lambda x: dict(pool=x.reshape(len(x), -1)))
  with pytest.raises(validate.UserError, match='exactly 8'):
    vm.fvd(v[:, :6], v[:, :6], net=tiny_net)
  with pytest.raises(validate.UserError, match='resolution'):
    vm.fvd(np.repeat(np.repeat(v, 2, 2), 2, 3), v, net=tiny_net)
  with pytest.raises(validate.UserError, match='RGB'):
    vm.fvd(v[..., :1], v[..., :1], net=tiny_net)
  with pytest.raises(validate.UserError, match='context_frames'):
    vm.physics_error(v, c_pos := clips['positions'], context_frames=8)
  with pytest.raises(validate.UserError, match='true_positions'):
    vm.physics_error(v, c_pos[:, :4], context_frames=2)
  with pytest.raises(validate.UserError, match='real_videos'):
    vm.physics_error(v, c_pos, context_frames=2, real_videos=v[:3])
  with pytest.raises(validate.UserError, match='objects'):
    vm.physics_error(v, c_pos, context_frames=2, objects=clips['objects'][:3])
  with pytest.raises(validate.UserError, match='split'):
    vm.real_clips('valid', 4)
