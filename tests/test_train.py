"""Training loop: resume exactness, NaN stop, accumulation, EMA, schedules."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
import pytest

from visgen import builder
from visgen import checkpoint as ckpt_lib
from visgen import config_lib
from visgen import optim
from visgen import state as state_lib
from visgen import train
from visgen import train_step as step_lib


def tiny_config(**overrides):
  """The quickstart's runlocal variant: an 8x8 digits MLP, batch 16."""
  import configs.quickstart as qs  # pylint: disable=g-import-not-at-top

  c = qs.get_config('runlocal')
  c.num_grid_samples = 0
  c.log_every = 1
  c.ckpt_every = 100
  c.total_steps = 6
  c.optim.schedule = 'cosine'
  c.optim.warmup_steps = 2
  for k, v in overrides.items():
    node = c
    *parents, leaf = k.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


def losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    recs = [json.loads(l) for l in f]
  return {r['step']: r['loss'] for r in recs if 'loss' in r}


def test_preempt_and_resume_continues_the_same_trajectory(tmp_path,
                                                         monkeypatch):
  """6 steps straight == 3 steps, SIGTERM (save + clean return), 3 more."""
  straight = str(tmp_path / 'straight')
  train.train_and_evaluate(tiny_config(), straight)

  resumed = str(tmp_path / 'resumed')
  orig = ckpt_lib.Checkpointer.reached_preemption

  def preempt_at_3(self, step):
    if step == 3:
      signal.raise_signal(signal.SIGTERM)  # The real handler sets the flag.
    return orig(self, step)

  monkeypatch.setattr(ckpt_lib.Checkpointer, 'reached_preemption',
                      preempt_at_3)
  out = train.train_and_evaluate(tiny_config(), resumed)
  assert out == {'preempted_at_step': 3}
  assert sorted(os.listdir(os.path.join(resumed, 'checkpoints'))) == ['3']
  monkeypatch.setattr(ckpt_lib.Checkpointer, 'reached_preemption', orig)
  train.train_and_evaluate(tiny_config(), resumed)

  a, b = losses(straight), losses(resumed)
  assert sorted(a) == list(range(1, 7))
  assert sorted(b) == list(range(1, 7))
  # Same data order (iterator restored), same RNG (folded with the step),
  # same compiled step: bit-identical on CPU.
  np.testing.assert_array_equal([a[s] for s in range(1, 7)],
                                [b[s] for s in range(1, 7)])
  assert len(set(a.values())) == 6  # The losses really move.


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / 'nan')
  # An absurd learning rate overflows the parameters after one update.
  cfg = tiny_config(**{'optim.lr': 1e30, 'optim.warmup_steps': 0,
                       'optim.schedule': 'constant', 'optim.grad_clip': 0.0,
                       'ckpt_every': 1})
  with pytest.raises(FloatingPointError, match='Non-finite loss .* step 2'):
    train.train_and_evaluate(cfg, workdir)
  ckpt = ckpt_lib.Checkpointer(workdir, every=1, keep_last=1, read_only=True)
  assert ckpt.latest_step() == 1
  state, step = ckpt.restore(builder.build(cfg).abstract)
  assert step == 1 and int(state['step']) == 1
  assert all(np.isfinite(np.asarray(x)).all()
             for x in jax.tree.leaves(state['params']))


def _toy_loss(params, frozen, task_state, batch, key):
  """A task's loss: the state counts the examples seen."""
  del frozen, key
  err = batch['x'] @ params['w'] - batch['y']
  return (jnp.mean(err ** 2), {'abs_err': jnp.abs(err)},
          {'seen': task_state['seen'] + err.shape[0]})


def test_gradient_accumulation_matches_one_big_batch():
  rng = np.random.default_rng(0)
  params = {'w': jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)}
  batch = {'x': jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
           'y': jnp.asarray(rng.normal(size=(8, 2)), jnp.float32)}
  tx = optax.sgd(0.1)
  init = state_lib.make_init(lambda _: params, tx, (0.5,),
                             task_init=lambda _: {'seen': jnp.int32(0)})
  outs = []
  for accum in (1, 4):
    step = step_lib.make_train_step(_toy_loss, tx, optax.constant_schedule(
        0.1), accum_steps=accum)
    outs.append(step(init(jax.random.key(0)), {}, batch,
                     jax.random.key(0)))
  (s1, m1), (s4, m4) = outs
  np.testing.assert_allclose(s4['params']['w'], s1['params']['w'], rtol=1e-6)
  np.testing.assert_allclose(m4['loss'], m1['loss'], rtol=1e-6)
  np.testing.assert_allclose(m4['abs_err'], m1['abs_err'], rtol=1e-6)
  # EMA with decay 0.5 after one step: 0.5 * w0 + 0.5 * w1.
  np.testing.assert_allclose(
      s1['ema']['0p5']['w'],
      0.5 * params['w'] + 0.5 * s1['params']['w'], rtol=1e-6)
  assert int(s1['step']) == 1
  # The task state passes through every micro-batch.
  assert int(s1['task']['seen']) == int(s4['task']['seen']) == 8


def test_ema_warmup_and_keys():
  assert state_lib.ema_key(0.9999) == '0p9999'
  assert state_lib.ema_decay('0p9999') == 0.9999
  ema = {'0p9999': {'w': jnp.zeros(())}}
  out = state_lib.ema_update(ema, {'w': jnp.ones(())}, jnp.int32(0),
                             warmup=True)
  # Debiased decay at step 0: min(0.9999, 1/10) = 0.1 -> 0.9 of the params.
  np.testing.assert_allclose(out['0p9999']['w'], 0.9, rtol=1e-6)


def test_schedules_and_unknown_names():
  cfg = config_lib.optim(lr=1.0, warmup_steps=4, schedule='cosine')
  sched = optim.make_schedule(mlc.ConfigDict(cfg), 12)
  np.testing.assert_allclose([sched(0), sched(2), sched(4), sched(12)],
                             [0.0, 0.5, 1.0, 0.0], atol=1e-6)
  cfg['schedule'] = 'constant'
  sched = optim.make_schedule(mlc.ConfigDict(cfg), 12)
  np.testing.assert_allclose([sched(2), sched(10)], [0.5, 1.0], atol=1e-6)
  cfg['schedule'] = 'linear'
  with pytest.raises(ValueError, match='Valid choices: constant, cosine'):
    optim.make_schedule(mlc.ConfigDict(cfg), 12)


def test_parse_arg():
  a = config_lib.parse_arg('runlocal,variant=S/2,res=64', variant='B/2',
                           res=256, runlocal=False, lr=1.0)
  assert (a.variant, a.res, a.runlocal, a.lr) == ('S/2', 64, True, 1.0)
  assert config_lib.parse_arg('XL/2', variant='B/2', runlocal=False
                              ).variant == 'XL/2'
  assert config_lib.parse_arg('runlocal', variant='B/2', runlocal=False
                              ).runlocal
  assert not config_lib.parse_arg('', runlocal=False).runlocal
  with pytest.raises(ValueError, match='Unknown config arg .*Valid args'):
    config_lib.parse_arg('runlocl,res=1', variant='B/2', runlocal=False,
                         res=1)
  with pytest.raises(ValueError, match='is not of type int'):
    config_lib.parse_arg('res=big', res=256)


def test_bf16_compute_fp32_params_and_logging_outputs(tmp_path):
  workdir = str(tmp_path)
  cfg = tiny_config(**{'model.dtype': 'bfloat16', 'total_steps': 2,
                       'sample_every': 1, 'num_grid_samples': 10})
  out = train.train_and_evaluate(cfg, workdir)
  assert out['steps'] == 2 and np.isfinite(out['final_loss'])
  ckpt = ckpt_lib.Checkpointer(workdir, every=1, keep_last=1, read_only=True)
  state, _ = ckpt.restore(builder.build(cfg).abstract)
  assert {x.dtype for x in jax.tree.leaves(state['params'])} == {
      np.dtype('float32')}
  # PNG grids at intervals and at the end (10 classes x 1 sample of 8x8,
  # upscaled 4x), TensorBoard event files, JSONL metrics, resolved config.
  from PIL import Image  # pylint: disable=g-import-not-at-top

  grids = sorted(os.listdir(os.path.join(workdir, 'samples')))
  assert grids == ['samples_0000001.png', 'samples_0000002.png']
  # One column, one row per class: 8x8 tiles, 1 px apart, upscaled 4x.
  assert Image.open(os.path.join(workdir, 'samples.png')).size == (
      8 * 4, (10 * 9 - 1) * 4)
  assert any(f.startswith('events.out.tfevents')
             for f in os.listdir(os.path.join(workdir, 'tb')))
  assert sorted(losses(workdir)) == [1, 2]
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['model']['dtype'] == 'bfloat16'
