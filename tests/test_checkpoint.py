"""Checkpoints: retention, atomic commit, fingerprint refusal, iterator."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_train import tiny_config
from visgen import builder
from visgen import checkpoint as ckpt_lib
from visgen import sharding
from visgen import train
from visgen.data import pipeline


def _state(v):
  return {'step': jnp.int32(v),
          'params': {'w': jnp.full((4, 3), v, jnp.float32)}}


def _fp(config):
  mesh = sharding.make_mesh(config.sharding.mesh)
  return ckpt_lib.fingerprint(config,
                              builder.build(config, mesh).abstract_params)


def _digits_iter():
  from visgen.data import digits  # pylint: disable=g-import-not-at-top

  d = digits.load_digits_split('test')
  src = [{'image': d['image'][i], 'label': d['label'][i]}
         for i in range(len(d['label']))]
  return pipeline.make_iterator(src, batch_size=4, seed=0)


def test_retention_latest_plus_every_kth(tmp_path):
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), every=1, keep_last=2,
                               keep_every=4, async_save=False)
  for step in range(1, 10):
    assert ckpt.save(step, _state(step))
  ckpt.close()
  assert sorted(ckpt.mngr.all_steps()) == [4, 8, 9]


def test_interrupted_save_leaves_last_good_checkpoint(tmp_path):
  it = _digits_iter()
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), every=1, keep_last=3)
  for step in (1, 2):
    next(it)
    ckpt.save(step, _state(step), it)
  ckpt.close()
  expected = next(it)  # Batch 3, i.e. what follows the step-2 position.
  # A crash mid-save leaves an uncommitted temporary directory behind.
  tmp = tmp_path / 'checkpoints' / '3.orbax-checkpoint-tmp-1234'
  (tmp / 'state').mkdir(parents=True)
  (tmp / 'state' / 'partial').write_bytes(b'\0' * 10)

  ckpt = ckpt_lib.Checkpointer(str(tmp_path), every=1, keep_last=3)
  assert ckpt.latest_step() == 2
  fresh = _digits_iter()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          _state(0))
  state, step = ckpt.restore(abstract, fresh)
  assert step == 2
  np.testing.assert_array_equal(state['params']['w'], 2.0)
  # The data iterator resumes exactly where step 2 left it.
  np.testing.assert_array_equal(next(fresh)['image'], expected['image'])
  ckpt.close()


def test_foreign_workdir_is_refused_and_untouched(tmp_path):
  workdir = str(tmp_path)
  cfg_a = tiny_config()
  ckpt = ckpt_lib.Checkpointer(workdir, every=1, keep_last=1, fp=_fp(cfg_a))
  ckpt.save(1, _state(1))
  ckpt.close()
  before = sorted(os.listdir(workdir))

  cfg_b = tiny_config(**{'model.width': 48})
  with pytest.raises(ValueError, match=r'different model or config(.|\n)*'
                     r'config model.width: checkpoint=32, now=48'):
    train.train_and_evaluate(cfg_b, workdir)
  assert sorted(os.listdir(workdir)) == before  # No config.json, no logs.
  # Run length and cadence may change on resume: same fingerprint.
  cfg_c = tiny_config(total_steps=100, log_every=7)
  assert ckpt_lib._differences(_fp(cfg_a), _fp(cfg_c)) == []
  diffs = ckpt_lib._differences(_fp(cfg_a), _fp(cfg_b))
  assert any(d.startswith('params ') for d in diffs)  # Shapes differ too.
