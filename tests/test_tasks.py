"""The task contract: conformance, task state in the train state and its
checkpoint, the importance sampler of t fed by the step, and sample mode."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_train import tiny_config
from visgen import builder
from visgen import config_loader
from visgen import sample as sample_lib
from visgen import train
from visgen.tasks import base

T, K = 4, 3  # Importance sampler: T discrete times, K losses of history.


def importance_config(**overrides):
  c = tiny_config(**overrides)
  c.time_dist = dict(name='importance', num_timesteps=T, history=K)
  return c


@pytest.mark.parametrize('spec', ['configs/quickstart.py:runlocal',
                                  'configs/digits_noisy_classifier.py:'
                                  'runlocal'])
def test_built_tasks_implement_the_contract(spec):
  b = builder.build(config_loader.load(spec))
  task = b.task
  assert isinstance(task, base.Task)
  assert set(task.batch_spec(5)) == set(task.batch_keys)
  assert all(s.shape[0] == 5 for s in task.batch_spec(5).values())
  cond = task.sample_cond(20)  # 10 digit classes, cycling
  np.testing.assert_array_equal(cond['label'], np.arange(20) % 10)
  np.testing.assert_array_equal(
      task.sample_cond({'per_class': 3})['label'],
      np.repeat(np.arange(10), 3))
  batch = {'label': np.arange(4) % 10}
  np.testing.assert_array_equal(task.eval_cond(batch)['label'],
                                batch['label'])
  m = task.to_media(np.zeros((20, 64), np.float32), cond)
  assert m.kind == 'image' and m.samples.shape == (20, 8, 8, 1)
  assert m.samples.dtype == np.uint8 and np.all(m.samples == 128)
  np.testing.assert_array_equal(m.labels, cond['label'])
  # The loss signature of the contract: the task state comes back.
  state = b.init(jax.random.key(0))
  assert state['task'] == {}
  x = {k: jnp.zeros(s.shape, s.dtype) for k, s in
       task.batch_spec(4).items()}
  loss, aux, new = task.loss(state['params'], b.frozen.params,
                             state['task'], x, jax.random.key(1))
  assert loss.shape == () and isinstance(aux, dict) and new == {}


def test_a_class_without_the_contract_is_refused_by_name():
  class Half:
    batch_keys = ('image',)

    def loss(self, *args):
      del args

  with pytest.raises(TypeError, match='Half does not implement .* missing: '
                     'batch_spec, init_state, sample, sample_cond, '
                     'eval_cond, to_media'):
    base.check_task(Half())


def test_importance_sampler_follows_the_loss_history():
  """p(t_i) = sqrt(E[L_i^2]) normalised (mixed with 0.001 uniform) once
  every bin holds K losses; uniform during the warm-up."""
  b = builder.build(importance_config())
  task = b.task
  params = b.init(jax.random.key(0))['params']
  n = 8000
  batch = {k: jnp.zeros(s.shape, s.dtype)
           for k, s in task.batch_spec(n).items()}
  loss_fn = jax.jit(lambda ts, k: task.loss(params, {}, ts, batch, k)[2])
  # Bin i's history: losses whose root mean square is c_i.
  c = np.array([1.0, 2.0, 4.0, 8.0])
  hist = np.stack([ci * np.array([1.0, 1.0, 1.0]) for ci in c])
  hist[1] = [0.0, 0.0, 2.0 * np.sqrt(3.0)]  # E[L^2] = 4: rms 2, not mean 2
  full = {'time_dist': {'losses': jnp.asarray(hist, jnp.float32),
                        'counts': jnp.full((T,), K, jnp.int32)}}
  p = c / c.sum() * (1 - 0.001) + 0.001 / T
  warm = {'time_dist': {'losses': jnp.asarray(hist, jnp.float32),
                        'counts': jnp.asarray([K, K, K, K - 1], jnp.int32)}}
  for state, want in ((full, p), (warm, np.full((T,), 1.0 / T))):
    new = loss_fn(state, jax.random.key(3))['time_dist']
    freq = (np.asarray(new['counts']) - np.asarray(
        state['time_dist']['counts'])) / n
    sd = np.sqrt(want * (1 - want) / n)
    assert np.all(np.abs(freq - want) < 4 * sd), (freq, want)
    # Every drawn example's loss entered the history of its bin: the last
    # K entries are new (positive) losses in every bin that was drawn.
    assert np.all(np.asarray(new['losses']) > 0)


@pytest.fixture(scope='module')
def importance_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('importance'))
  cfg = importance_config(total_steps=2)
  train.train_and_evaluate(cfg, workdir)
  return cfg, workdir


def test_task_state_is_trained_and_round_trips_a_checkpoint(importance_run):
  """The step feeds the sampler's history (before the fix it trained with
  uniform t and kept no state); the checkpoint holds it."""
  cfg, workdir = importance_run
  b, state, step = builder.restore(cfg, workdir)
  assert step == 2
  hist = jax.device_get(state['task']['time_dist'])
  bs = cfg.data.batch_size
  assert int(hist['counts'].sum()) == 2 * bs  # every example, both steps
  filled = np.minimum(hist['counts'], K)
  for i in range(T):  # A ring buffer: the newest min(count, K) entries.
    row = hist['losses'][i]
    assert np.all(row[K - filled[i]:] > 0) and np.all(row[:K - filled[i]]
                                                      == 0)
  # Resume continues from the restored history (not a fresh one).
  cfg3 = importance_config(total_steps=3)
  train.train_and_evaluate(cfg3, workdir)
  _, state3, _ = builder.restore(cfg3, workdir)
  assert int(state3['task']['time_dist']['counts'].sum()) == 3 * bs
  assert b.abstract['task']['time_dist']['losses'].shape == (T, K)


def test_sample_mode_writes_the_adm_batch(importance_run):
  cfg, workdir = importance_run
  cfg = cfg.copy_and_resolve_references()
  cfg.num_samples, cfg.sample_batch = 12, 8
  path = sample_lib.sample_main(cfg, workdir)
  assert os.path.basename(path).startswith('samples_') and os.path.exists(
      path[:-4] + '.png')
  with np.load(path) as f:
    assert set(f.files) == {'arr_0', 'arr_1'}
    assert f['arr_0'].shape == (12, 8, 8, 1) and f['arr_0'].dtype == np.uint8
    # The labels the task asked for, cycling through the classes.
    np.testing.assert_array_equal(f['arr_1'], np.arange(12) % 10)
