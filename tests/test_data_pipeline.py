"""Tests for grain pipelines: determinism, sharding, resume, global arrays."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from visgen.data import pipeline


class _Toy:
  """A 10-example source whose image encodes its index (for exact checks)."""

  def __len__(self):
    return 10

  def __getitem__(self, i):
    image = np.zeros((2, 3, 1), np.uint8)
    image[:, :, 0] = [i, 100 + i, 200 + i]  # asymmetric: flips are visible
    return dict(image=image, label=np.int32(i))


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_deterministic_and_epochs_are_permutations():
  a = _take(pipeline.make_iterator(_Toy(), batch_size=5, seed=3), 4)
  b = _take(pipeline.make_iterator(_Toy(), batch_size=5, seed=3), 4)
  c = _take(pipeline.make_iterator(_Toy(), batch_size=5, seed=4), 4)
  labels = np.concatenate([x['label'] for x in a])
  np.testing.assert_array_equal(
      labels, np.concatenate([x['label'] for x in b]))
  assert not np.array_equal(labels, np.concatenate([x['label'] for x in c]))
  # Each epoch visits every example once, in a different order.
  assert sorted(labels[:10]) == list(range(10))
  assert sorted(labels[10:]) == list(range(10))
  assert not np.array_equal(labels[:10], labels[10:])
  assert a[0]['image'].dtype == np.uint8 and a[0]['image'].shape == (5, 2, 3, 1)


def test_no_repeat_no_shuffle_remainder():
  it = pipeline.make_iterator(_Toy(), batch_size=4, seed=0, shuffle=False,
                              repeat=False, drop_remainder=False)
  labels = [b['label'].tolist() for b in it]
  assert labels == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_flip_flips_some_images_consistently():
  it = pipeline.make_iterator(_Toy(), batch_size=10, seed=0, flip=True)
  batch = next(it)
  flipped = batch['image'][:, 0, 0, 0] >= 200
  assert 0 < flipped.sum() < 10
  for img, lab, f in zip(batch['image'], batch['label'], flipped):
    want = _Toy()[int(lab)]['image']
    np.testing.assert_array_equal(img, want[:, ::-1] if f else want)


def test_multi_process_slices_reassemble_global_batch():
  glob = _take(pipeline.make_iterator(_Toy(), batch_size=8, seed=1,
                                      flip=True), 3)
  hosts = [
      _take(pipeline.make_iterator(_Toy(), batch_size=8, seed=1, flip=True,
                                   process_index=p, process_count=4), 3)
      for p in range(4)
  ]
  for k in range(3):
    for key in ('image', 'label'):
      local = [hosts[p][k][key] for p in range(4)]
      assert local[0].shape[0] == 2
      np.testing.assert_array_equal(np.concatenate(local), glob[k][key])


def test_bad_sharding_arguments():
  with pytest.raises(ValueError, match='divisible'):
    pipeline.make_iterator(_Toy(), batch_size=6, seed=0, process_index=0,
                           process_count=4)


def test_resume_after_orbax_checkpoint_manager_round_trip(tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  make = lambda: pipeline.make_iterator(_Toy(), batch_size=3, seed=7,
                                        flip=True)
  it = make()
  _take(it, 2)  # mid-epoch: 6 of 10 examples consumed
  mngr = ocp.CheckpointManager(tmp_path / 'ckpt')
  mngr.save(
      5,
      args=ocp.args.Composite(
          state=ocp.args.StandardSave({'w': np.arange(3.0)}),
          data=pipeline.checkpoint_args(it),
      ),
  )
  mngr.wait_until_finished()
  expected = _take(it, 3)  # crosses the epoch boundary too
  mngr.close()

  fresh = make()
  mngr = ocp.CheckpointManager(tmp_path / 'ckpt')
  restored = mngr.restore(
      mngr.latest_step(),
      args=ocp.args.Composite(
          data=pipeline.checkpoint_args(fresh, restore=True)),
  )
  mngr.close()
  assert restored['data'] is fresh
  got = _take(fresh, 3)
  for e, g in zip(expected, got):
    np.testing.assert_array_equal(e['label'], g['label'])
    np.testing.assert_array_equal(e['image'], g['image'])
  # A fresh, un-restored iterator starts elsewhere (the test can fail).
  assert not np.array_equal(next(make())['label'], expected[0]['label'])


_SHARDING_SCRIPT = textwrap.dedent("""
    import numpy as np
    import jax
    from jax.sharding import Mesh
    from visgen.data import pipeline

    class Toy:
      def __len__(self):
        return 40
      def __getitem__(self, i):
        return dict(image=np.full((2, 2, 1), i, np.uint8),
                    label=np.int32(i), caption=np.str_(f'c{i}'))

    assert jax.device_count() == 8, jax.devices()
    for shape, axes in (((8,), ('data',)), ((4, 2), ('data', 'fsdp'))):
      mesh = Mesh(np.array(jax.devices()).reshape(shape), axes)
      it = pipeline.make_iterator(Toy(), batch_size=16, seed=0)
      local = next(it)
      glob = pipeline.make_global_array(local, mesh, batch_axes=axes)
      assert glob['label'].shape == (16,) and glob['image'].shape == (
          16, 2, 2, 1)
      assert isinstance(glob['caption'], np.ndarray)
      np.testing.assert_array_equal(np.asarray(glob['label']), local['label'])
      flat = list(mesh.devices.flat)
      for shard in glob['label'].addressable_shards:
        rank = flat.index(shard.device)  # row-major over (data, fsdp)
        np.testing.assert_array_equal(
            np.asarray(shard.data), local['label'][2 * rank: 2 * rank + 2])
      for shard in glob['image'].addressable_shards:
        assert shard.data.shape == (2, 2, 2, 1)
    print('OK')
""")


def test_eight_fake_devices_get_their_slice():
  env = dict(os.environ)
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
  env['JAX_PLATFORMS'] = 'cpu'
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env['PYTHONPATH'] = root + os.pathsep + env.get('PYTHONPATH', '')
  out = subprocess.run([sys.executable, '-c', _SHARDING_SCRIPT], env=env,
                       capture_output=True, text=True, timeout=120,
                       check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().endswith('OK')


def test_threads_do_not_change_the_stream():
  a = _take(pipeline.make_iterator(_Toy(), batch_size=4, seed=2, flip=True), 5)
  it = pipeline.make_iterator(_Toy(), batch_size=4, seed=2, flip=True,
                              num_threads=2)
  b = _take(it, 3)
  state = it.get_state()
  b += _take(it, 2)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['image'], y['image'])
  it2 = pipeline.make_iterator(_Toy(), batch_size=4, seed=2, flip=True,
                               num_threads=2)
  it2.set_state(state)
  np.testing.assert_array_equal(next(it2)['label'], a[3]['label'])


def test_flip_moves_masks_and_videos_with_the_image():
  from visgen.data import shapes_motion  # pylint: disable=g-import-not-at-top

  src = shapes_motion.ShapesVideoSource(split='test', num_examples=8,
                                        num_frames=2)
  batch = next(pipeline.make_iterator(src, batch_size=8, seed=0, flip=True,
                                      shuffle=False))
  flipped = 0
  for i in range(8):
    ex = src[i]
    f = not np.array_equal(batch['video'][i], ex['video'])
    flipped += f
    for key in ('image', 'video', 'instance_masks'):
      want = ex[key][..., ::-1, :] if f else ex[key]
      np.testing.assert_array_equal(batch[key][i], want, err_msg=key)
  assert 0 < flipped < 8
