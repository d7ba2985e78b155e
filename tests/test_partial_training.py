"""Partial training: trainable masks by regex and warm starts (init_from)."""

import json
import os
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
import pytest

from tests.test_train import tiny_config
from visgen import checkpoint as ckpt_lib
from visgen import config_lib
from visgen import models
from visgen import optim
from visgen import param_tree
from visgen import sharding
from visgen import state as state_lib
from visgen import train
from visgen import train_step as step_lib
from visgen import validate
from visgen import warm_start
from visgen import weights as weights_lib

MLP = dict(dim=4, width=8, depth=2, num_classes=2, dtype=jnp.float32)
MLP_PATHS = [
    'blocks/0/fc1/bias', 'blocks/0/fc1/kernel', 'blocks/0/fc2/bias',
    'blocks/0/fc2/kernel', 'blocks/1/fc1/bias', 'blocks/1/fc1/kernel',
    'blocks/1/fc2/bias', 'blocks/1/fc2/kernel', 'inp/bias', 'inp/kernel',
    'out/bias', 'out/kernel', 't_embed/fc1/bias', 't_embed/fc1/kernel',
    't_embed/fc2/bias', 't_embed/fc2/kernel', 'y_embed/table']




def _mlp(seed=0, **kw):
  graphdef, params = models.split_model(models.get_model(
      'mlp', rngs=nnx.Rngs(seed), **dict(MLP, **kw)))
  return models.make_apply(graphdef), params


def _optim(**kw):
  return mlc.ConfigDict(dict(config_lib.optim(lr=1e-2, weight_decay=0.5),
                             **kw))


def _trained_set(cfg, params):
  mask = param_tree.flatten(optim.trainable_mask(cfg, params))
  return sorted(p for p, m in mask.items() if m)


def test_mask_selects_by_whole_path_regex():
  _, params = _mlp()
  assert list(param_tree.flatten(params)) == MLP_PATHS
  assert _trained_set(_optim(), params) == MLP_PATHS
  assert _trained_set(_optim(freeze=['blocks/.*']), params) == [
      p for p in MLP_PATHS if not p.startswith('blocks/')]
  # trainable narrows first, freeze removes from what is left.
  assert _trained_set(_optim(trainable=['blocks/.*', 'out/.*'],
                             freeze=['.*/bias']), params) == [
                                 'blocks/0/fc1/kernel', 'blocks/0/fc2/kernel',
                                 'blocks/1/fc1/kernel', 'blocks/1/fc2/kernel',
                                 'out/kernel']
  # fullmatch: 'kernel' alone matches nothing (a typo must not pass).
  with pytest.raises(ValueError, match="freeze regex 'kernel' matches no"):
    optim.trainable_mask(_optim(freeze=['kernel']), params)
  with pytest.raises(ValueError, match='leave no parameter to train'):
    optim.trainable_mask(_optim(freeze=['.*']), params)
  with pytest.raises(ValueError, match=r'config.optim.trainable: invalid'):
    optim.trainable_mask(_optim(trainable=['blocks/(']), params)


def _regression_step(apply, tx):
  """A jitted, state-donating step regressing the MLP onto fixed targets."""

  def loss_fn(params, frozen, task_state, batch, key):
    del frozen, key
    out = apply(params, batch['x'], batch['t'], {'label': batch['label']})
    return jnp.mean((out - batch['y']) ** 2), {}, task_state

  step = step_lib.make_train_step(loss_fn, tx, optax.constant_schedule(1e-2))
  return jax.jit(step, donate_argnums=(0,))


def _batch():
  rng = np.random.default_rng(0)
  return {'x': jnp.asarray(rng.normal(size=(8, 4)), jnp.float32),
          't': jnp.asarray(rng.uniform(size=8), jnp.float32),
          'label': jnp.asarray(rng.integers(0, 2, 8), jnp.int32),
          'y': jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)}


def test_masked_params_bit_identical_after_steps_others_change():
  apply, params = _mlp()
  cfg = _optim(freeze=['blocks/.*', 't_embed/.*'])
  tx, _ = optim.make_optimizer(cfg, 10)
  before = {k: np.array(v) for k, v in param_tree.flatten(params).items()}
  state = state_lib.make_init(lambda _: params, tx, (0.5,))(None)
  step = _regression_step(apply, tx)
  batch, key = _batch(), jax.random.key(0)
  losses = []
  for _ in range(3):
    state, metrics = step(state, {}, batch, key)
    losses.append(float(metrics['loss']))
  after = {k: np.asarray(v) for k, v in param_tree.flatten(
      state['params']).items()}
  frozen = [p for p in MLP_PATHS if p.startswith(('blocks/', 't_embed/'))]
  for p in MLP_PATHS:
    if p in frozen:  # weight_decay=0.5 would move them if they were trained.
      np.testing.assert_array_equal(after[p], before[p], err_msg=p)
    elif not p.endswith('bias'):  # Biases start at 0 and may stay small.
      assert not np.array_equal(after[p], before[p]), p
  assert losses[-1] < losses[0]
  # No optimizer state for masked parameters: Adam's mu holds only the
  # trained ones.
  mu_paths = {p for p in param_tree.flatten(state['opt_state'])
              if '/mu/' in f'/{p}'}
  assert len(mu_paths) == len(MLP_PATHS) - len(frozen)
  assert not any(f in p for p in mu_paths for f in ('blocks/', 't_embed/'))


def test_masked_optimizer_state_gets_parameter_shardings():
  # On a 1-device mesh the specs still name the mesh axes, so the FSDP
  # placement of Adam's moments is visible without 8 devices.
  _, params = _mlp()
  cfg = _optim(freeze=['blocks/.*'])
  tx, _ = optim.make_optimizer(cfg, 10)
  init = state_lib.make_init(lambda _: params, tx, (0.9,))
  abstract = jax.eval_shape(init, None)
  scfg = mlc.ConfigDict(config_lib.mesh_and_sharding('fsdp'))
  mesh = sharding.make_mesh(scfg.mesh)
  p_shard = sharding.param_shardings(abstract['params'], mesh, scfg)
  shard = sharding.tree_shardings(abstract, abstract['params'], p_shard, mesh)
  specs = {p: s.spec for p, s in param_tree.flatten(p_shard).items()}
  assert specs['inp/kernel'] == jax.sharding.PartitionSpec(None, 'fsdp')
  n_moment = 0
  for path, s in param_tree.flatten(shard).items():
    suffix = [p for p in specs if path.endswith('/' + p) or path == p]
    if suffix:
      assert s.spec == specs[max(suffix, key=len)], path
      n_moment += '/mu/' in path
    else:
      assert s.spec == jax.sharding.PartitionSpec(), path
  assert n_moment == len(MLP_PATHS) - 8  # blocks/{0,1}/fc{1,2}/{kernel,bias}


# ----------------------------------------------------------------------------
# init_from.
# ----------------------------------------------------------------------------


def _save_run(workdir, params, ema_scale=0.5):
  """A workdir as a visgen run leaves it: checkpoint + config.json."""
  tx, _ = optim.make_optimizer(_optim(), 10)
  state = state_lib.make_init(lambda _: params, tx, (0.999,))(None)
  state['ema'] = {'0p999': jax.tree.map(lambda x: x * ema_scale, params)}
  ckpt = ckpt_lib.Checkpointer(workdir, every=1, keep_last=1,
                               async_save=False)
  ckpt.save(3, state, force=True)
  ckpt.close()
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump({'model': dict(MLP, name='mlp', dtype='float32'),
               'ema_decays': [0.999]}, f)


def test_plan_first_matching_rule_none_keeps_init():
  paths = ['control/a', 'control/b', 'enc/a', 'head/w']
  got = warm_start.plan(paths, [('control/b', None),
                                ('control/(.*)', r'enc/\1'),
                                ('(enc/.*)', r'\1')])
  assert got == {'control/a': 'enc/a', 'enc/a': 'enc/a'}
  assert warm_start.plan(paths, None) == {p: p for p in paths}
  with pytest.raises(ValueError, match=r"\['decoder/.\*'\] match no"):
    warm_start.plan(paths, [('decoder/.*', r'\g<0>'), ('(.*)', r'\1')])


def _fresh_state(params):
  tx, _ = optim.make_optimizer(_optim(), 10)
  return state_lib.make_init(lambda _: params, tx, (0.9, 0.99))(None)


def test_init_from_copies_mapped_params_exactly(tmp_path):
  _, src = _mlp(seed=1, depth=1)  # The "base": one block.
  _save_run(str(tmp_path), src)
  _, fresh = _mlp(seed=2)  # Two blocks: block 1 is a copy of the base's 0.
  state = _fresh_state(fresh)
  init = {k: np.array(v) for k, v in param_tree.flatten(fresh).items()}
  cfg = dict(source=f'workdir:{tmp_path}', weights='raw',
             mapping=[('out/.*', None), ('blocks/1/(.*)', r'blocks/0/\1'),
                      ('(.*)', r'\1')])
  out = warm_start.warm_start(state, cfg)
  src_flat = {k: np.asarray(v) for k, v in param_tree.flatten(src).items()}
  for tree in [out['params']] + list(out['ema'].values()):
    flat = param_tree.flatten(tree)
    for p in MLP_PATHS:
      if p.startswith('out/'):
        want = init[p]
      elif p.startswith('blocks/1/'):
        want = src_flat[p.replace('blocks/1/', 'blocks/0/')]
      else:
        want = src_flat[p]
      np.testing.assert_array_equal(np.asarray(flat[p]), want, err_msg=p)
  # The EMA choice reads the EMA (scaled by 0.5 in the saved run).
  out = warm_start.warm_start(_fresh_state(fresh), dict(
      source=f'workdir:{tmp_path}', mapping=[('inp/kernel', r'\g<0>')]))
  np.testing.assert_array_equal(
      np.asarray(param_tree.flatten(out['params'])['inp/kernel']),
      0.5 * src_flat['inp/kernel'])
  # Same through an .npz file (identity converter).
  weights_lib.save_npz(str(tmp_path / 'w.npz'), src)
  out = warm_start.warm_start(_fresh_state(fresh), dict(
      source=str(tmp_path / 'w.npz'), mapping=[('(inp/.*)', r'\1')]))
  np.testing.assert_array_equal(
      np.asarray(param_tree.flatten(out['params'])['inp/kernel']),
      src_flat['inp/kernel'])


def test_init_from_errors_name_paths_and_shapes(tmp_path):
  _, src = _mlp(seed=1, depth=1, width=16)
  _save_run(str(tmp_path), src)
  _, fresh = _mlp()
  state = _fresh_state(fresh)
  with pytest.raises(ValueError) as e:
    warm_start.warm_start(state, dict(source=f'workdir:{tmp_path}'))
  msg = str(e.value)
  assert "'inp/kernel' <- 'inp/kernel': expected shape (4, 8), found " \
         '(4, 16)' in msg
  with pytest.raises(ValueError, match="<- 'blocks/1/fc1/bias': .* has no "
                     "'blocks/1/fc1/bias'"):
    warm_start.warm_start(state, dict(source=f'workdir:{tmp_path}',
                                      mapping=[('blocks/1/.*', r'\g<0>')]))
  with pytest.raises(FileNotFoundError, match='workdir .*/x not found'):
    warm_start.warm_start(state, dict(source=f'workdir:{tmp_path}/x'))
  os.makedirs(tmp_path / 'empty')
  with pytest.raises(FileNotFoundError, match='no checkpoint in .*Train'):
    warm_start.warm_start(state, dict(source=f'workdir:{tmp_path}/empty'))
  with pytest.raises(ValueError, match=r"unknown fields \['mappings'\]"):
    warm_start.warm_start(state, dict(source='a.npz', mappings=[]))


def _cli_config(*overrides):
  """The quickstart's runlocal config as `visgen.main` parses it."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  from visgen import main  # pylint: disable=g-import-not-at-top
  fv = flags.FlagValues()
  main._define_flags(fv)  # pylint: disable=protected-access
  qs = os.path.join(os.path.dirname(__file__), '..', 'configs',
                    'quickstart.py')
  argv = ['visgen.main', f'--config={qs}:runlocal',
          '--workdir=unused', '--config.num_grid_samples=0',
          '--config.log_every=1', *overrides]
  saved, sys.argv = sys.argv, argv  # ml_collections reads sys.argv.
  try:
    fv(argv)
  finally:
    sys.argv = saved
  validate.check_config(fv.config, device_count=1)
  return fv.config


def test_init_from_and_masks_default_to_off_and_validate():
  c = _cli_config()
  assert c.optim.trainable is None and c.optim.freeze is None
  assert not c.init_from.source and c.init_from.step is None
  c = _cli_config('--config.init_from.source=npz:w.npz',
                  '--config.init_from.step=7',
                  "--config.init_from.mapping=(('control/(.*)', r'enc/\\1'),"
                  " ('out/.*', None))",
                  "--config.optim.trainable=('control/.*', 'out/.*')")
  assert c.init_from.step == 7
  assert c.init_from.mapping == (('control/(.*)', r'enc/\1'),
                                 ('out/.*', None))
  assert c.optim.trainable == ('control/.*', 'out/.*')
  # The fingerprint a resumption compares ignores init_from, and a run saved
  # before the placeholders existed (no such keys) matches the defaults.
  fp = ckpt_lib.fingerprint(_cli_config(), {})['config']
  assert not any(k.startswith('init_from') for k in fp)
  assert fp['optim.freeze'] is None and fp['optim.trainable'] is None


def test_loop_init_from_fresh_runs_only_with_a_trainable_mask(
    tmp_path, monkeypatch):
  """Run B warm-starts from run A with blocks frozen: after training, B's
  blocks are A's exactly and the rest moved; B's resumption restores its
  own checkpoint and never warm-starts again."""
  run_a, run_b = str(tmp_path / 'a'), str(tmp_path / 'b')
  train.train_and_evaluate(tiny_config(total_steps=2, ckpt_every=2), run_a)
  src = weights_lib.read_checkpoint(run_a, weights='raw')

  def config_b(total, source=run_a):
    # Through the command line: the config declares init_from and the masks.
    c = _cli_config(f'--config.total_steps={total}', '--config.ckpt_every=2',
                    f'--config.init_from.source=workdir:{source}',
                    '--config.init_from.weights=raw',
                    '--config.optim.freeze=blocks/.*')
    assert c.optim.freeze == ('blocks/.*',)
    return c

  train.train_and_evaluate(config_b(2), run_b)
  got = weights_lib.read_checkpoint(run_b, weights='raw')
  assert sorted(got) == sorted(src)
  for p in src:
    if p.startswith('blocks/'):
      np.testing.assert_array_equal(got[p], src[p], err_msg=p)
    elif p.endswith('kernel'):
      assert not np.array_equal(got[p], src[p]), p

  def refuse(*_):
    raise AssertionError('a resumed run must not warm-start')

  monkeypatch.setattr(warm_start, 'warm_start', refuse)
  # A changed init_from does not refuse the resumption (it never applies).
  train.train_and_evaluate(config_b(4, source=tmp_path / 'gone'), run_b)
  got4 = weights_lib.read_checkpoint(run_b, weights='raw', step=4)
  for p in src:
    if p.startswith('blocks/'):
      np.testing.assert_array_equal(got4[p], src[p], err_msg=p)
