"""Frozen components: loading, sharding, errors, and untouched by training."""

import json
import os
import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from tests.test_train import tiny_config
from visgen import builder
from visgen import checkpoint as ckpt_lib
from visgen import config_lib
from visgen import frozen as frozen_lib
from visgen import models
from visgen import optim
from visgen import param_tree
from visgen import sharding
from visgen import state as state_lib
from visgen import train
from visgen import train_step as step_lib
from visgen import weights as weights_lib

MODEL = dict(name='mlp', dim=4, width=8, depth=1, num_classes=2,
             dtype='float32')




def _params(seed=0, **kw):
  cfg = dict(MODEL, **kw)
  name = cfg.pop('name')
  cfg['dtype'] = jnp.float32
  return models.split_model(models.get_model(name, rngs=nnx.Rngs(seed),
                                             **cfg))


def _config(mesh_kind='fsdp', **frozen):
  c = mlc.ConfigDict()
  c.sharding = config_lib.mesh_and_sharding(mesh_kind)
  c.frozen = frozen
  return c


def _host(tree):
  return {k: np.array(v) for k, v in param_tree.flatten(tree).items()}


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A workdir as a visgen run leaves it: raw params, EMA = 0.5 * params."""
  workdir = str(tmp_path_factory.mktemp('base'))
  _, params = _params(seed=3)
  tx = optax.adam(1e-3)
  state = state_lib.make_init(lambda _: params, tx, (0.999,))(None)
  state['ema'] = {'0p999': jax.tree.map(lambda x: x * 0.5, params)}
  ckpt = ckpt_lib.Checkpointer(workdir, every=1, keep_last=1,
                               async_save=False)
  ckpt.save(7, state, force=True)
  ckpt.close()
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump({'model': MODEL, 'ema_decays': [0.999]}, f)
  return workdir, _host(params)


def test_workdir_source_ema_or_raw_sharded_by_the_rules(run_dir):
  workdir, want = run_dir
  # No model config: the run's own config.json names it.
  cfg = _config(ema=dict(source=f'workdir:{workdir}'),
                raw=dict(source=f'workdir:{workdir}', weights='raw',
                         model=MODEL))
  mesh = sharding.make_mesh(cfg.sharding.mesh)
  fz = frozen_lib.build_frozen(cfg, mesh)
  assert sorted(fz.params) == ['ema', 'raw']
  ema, raw = _host(fz.params['ema']), _host(fz.params['raw'])
  assert sorted(raw) == sorted(want)
  for p, w in want.items():
    np.testing.assert_array_equal(raw[p], w, err_msg=p)
    np.testing.assert_array_equal(ema[p], 0.5 * w, err_msg=p)
  # Same logical rules as trainable params: 'embed' -> 'fsdp'.
  spec = param_tree.flatten(fz.params['raw'])['inp/kernel'].sharding.spec
  assert spec == jax.sharding.PartitionSpec(None, 'fsdp')
  assert fz.sources['raw'] == f'{workdir} (raw)'


def test_files_npz_and_safetensors_and_apply(run_dir, tmp_path):
  _, want = run_dir
  weights_lib.save_npz(str(tmp_path / 'w.npz'), want)
  weights_lib.write_safetensors(str(tmp_path / 'w.safetensors'), want)
  cfg = _config(a=dict(model=MODEL, source=f'npz:{tmp_path}/w.npz'),
                b=dict(model=MODEL, source=str(tmp_path / 'w.safetensors'),
                       converter='identity'))
  fz = frozen_lib.build_frozen(cfg, sharding.make_mesh(cfg.sharding.mesh))
  for name in 'ab':
    got = _host(fz.params[name])
    for p, w in want.items():
      np.testing.assert_array_equal(got[p], w, err_msg=f'{name} {p}')
  # apply == the model's own functional call on the same params.
  graphdef, _ = _params()
  x, t = jnp.ones((2, 4)), jnp.array([0.2, 0.7])
  cond = {'label': jnp.array([0, 1])}
  np.testing.assert_array_equal(
      fz.apply['a'](fz.params['a'], x, t, cond),
      models.make_apply(graphdef)(fz.params['a'], x, t, cond))


def test_safetensors_reader_matches_the_reference_writer(tmp_path):
  st = pytest.importorskip('safetensors.numpy')
  arrays = {'a/b': np.arange(6, dtype=np.float32).reshape(2, 3),
            'c': np.array([1, -2], np.int64),
            'h': np.array([0.5, 1.5], np.float16)}
  st.save_file(arrays, str(tmp_path / 'ref.safetensors'))
  got = weights_lib.read_safetensors(str(tmp_path / 'ref.safetensors'))
  for k, v in arrays.items():
    np.testing.assert_array_equal(got[k], v)
    assert got[k].dtype == v.dtype
  weights_lib.write_safetensors(str(tmp_path / 'ours.safetensors'), arrays)
  back = st.load_file(str(tmp_path / 'ours.safetensors'))
  for k, v in arrays.items():
    np.testing.assert_array_equal(back[k], v)


def test_safetensors_round_trip_and_layout(tmp_path):
  arrays = {'x/kernel': np.arange(12, dtype=np.float32).reshape(3, 4),
            'flag': np.array([True, False]),
            'bf': np.array([1.0, -2.0], dtype=jnp.bfloat16)}
  path = str(tmp_path / 'w.safetensors')
  weights_lib.write_safetensors(path, arrays)
  raw = open(path, 'rb').read()
  n = int.from_bytes(raw[:8], 'little')
  header = json.loads(raw[8:8 + n])
  assert (8 + n) % 8 == 0  # Data aligned to 8 bytes, as the format says.
  assert header['x/kernel'] == {'dtype': 'F32', 'shape': [3, 4],
                                'data_offsets': [0, 48]}
  assert header['bf']['dtype'] == 'BF16'
  got = weights_lib.read_safetensors(path)
  for k, v in arrays.items():
    np.testing.assert_array_equal(got[k], v)
    assert got[k].dtype == v.dtype


def test_missing_and_mismatched_sources_name_file_path_and_shapes(
    run_dir, tmp_path):
  workdir, want = run_dir
  mesh = sharding.make_mesh(config_lib.mesh_and_sharding('dp')['mesh'])

  def build(**entry):
    return frozen_lib.build_frozen(_config('dp', ae=entry), mesh)

  missing = str(tmp_path / 'nope.npz')
  with pytest.raises(FileNotFoundError,
                     match=f"'ae': weight file {missing} not found"):
    build(model=MODEL, source=missing)
  with pytest.raises(FileNotFoundError, match='no checkpoint in .*Train'):
    build(model=MODEL, source=f'workdir:{tmp_path}')
  # A file saved from a width-16 model, read as width 8.
  _, wide = _params(width=16)
  path = str(tmp_path / 'wide.npz')
  weights_lib.save_npz(path, wide)
  with pytest.raises(ValueError) as e:
    build(model=MODEL, source=path)
  msg = str(e.value)
  assert f"'ae': weight file {path} does not match" in msg
  assert "parameter 'inp/kernel': expected shape (4, 8), found (4, 16)" in msg
  # A checkpoint of another architecture: same report, naming the item.
  with pytest.raises(ValueError, match=r"checkpoint .*/7/state \(params\) "
                     r"does not match(.|\n)*'blocks/0/fc1/bias': expected "
                     r'shape \(16,\), found \(8,\)'):
    build(model=dict(MODEL, width=16), source=f'workdir:{workdir}',
          weights='raw')
  # Missing and extra entries.
  partial = {k: v for k, v in want.items() if k != 'out/bias'}
  partial['extra/w'] = np.zeros(3, np.float32)
  np.savez(tmp_path / 'partial.npz', **partial)
  with pytest.raises(ValueError, match=r"'out/bias' \(expected shape \(4,\)\)"
                     r" is missing(.|\n)*'extra/w' \(shape \(3,\)\) matches "
                     'no parameter'):
    build(model=MODEL, source=str(tmp_path / 'partial.npz'))
  with pytest.raises(ValueError, match='converter: Unknown weight converter '
                     "'diffusers'. Valid choices: .*identity"):
    build(model=MODEL, source=path, converter='diffusers')
  with pytest.raises(ValueError, match=r"unknown fields \['path'\]"):
    build(model=MODEL, path=path)
  with pytest.raises(ValueError, match='no EMA 0.5 in .*it has 0.999'):
    build(source=f'workdir:{workdir}', weights='ema:0.5')


def test_frozen_part_bit_identical_while_trainable_subset_changes(run_dir):
  """Distillation-shaped step: a student with a trainable mask regresses a
  frozen teacher; the state is donated, `frozen` is not."""
  workdir, _ = run_dir
  cfg = _config('dp', teacher=dict(source=f'workdir:{workdir}'))
  fz = frozen_lib.build_frozen(cfg, sharding.make_mesh(cfg.sharding.mesh))
  teacher_before = _host(fz.params['teacher'])
  student_apply_graph, student = _params(seed=5)
  apply = models.make_apply(student_apply_graph)

  def loss_fn(params, frozen, task_state, batch, key):
    del key
    target = fz.apply['teacher'](frozen['teacher'], batch['x'], batch['t'],
                                 {'label': batch['label']})
    out = apply(params, batch['x'], batch['t'], {'label': batch['label']})
    return jnp.mean((out - target) ** 2), {}, task_state

  ocfg = mlc.ConfigDict(config_lib.optim(lr=1e-2))
  ocfg.trainable = ['inp/.*', 'out/.*']
  tx, sched = optim.make_optimizer(ocfg, 10)
  state = state_lib.make_init(lambda _: student, tx, (0.9,))(None)
  student_before = _host(student)
  step = jax.jit(step_lib.make_train_step(loss_fn, tx, sched),
                 donate_argnums=(0,))
  rng = np.random.default_rng(0)
  batch = {'x': jnp.asarray(rng.normal(size=(8, 4)), jnp.float32),
           't': jnp.asarray(rng.uniform(size=8), jnp.float32),
           'label': jnp.asarray(rng.integers(0, 2, 8), jnp.int32)}
  losses = []
  for _ in range(4):
    state, metrics = step(state, fz.params, batch, jax.random.key(0))
    losses.append(float(metrics['loss']))
  assert losses[-1] < losses[0]
  for p, v in _host(fz.params['teacher']).items():
    np.testing.assert_array_equal(v, teacher_before[p], err_msg=p)
  after = _host(state['params'])
  for p, v in after.items():
    if p.startswith(('inp/', 'out/')) and p.endswith('kernel'):
      assert not np.array_equal(v, student_before[p]), p
    elif not p.startswith(('inp/', 'out/')):
      np.testing.assert_array_equal(v, student_before[p], err_msg=p)


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    recs = [json.loads(line) for line in f]
  return {r['step']: r['loss'] for r in recs if 'loss' in r}


def test_loop_checkpoints_exclude_frozen_parts_and_resume(run_dir, tmp_path):
  """The loop with a frozen teacher: the saved tree is exactly the train
  state (no frozen leaf), and 2 + 2 steps equal 4 straight steps."""
  def config(total):
    c = tiny_config(total_steps=total, ckpt_every=2)
    c.frozen.teacher = dict(source=f'workdir:{run_dir[0]}')
    return c

  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  train.train_and_evaluate(config(4), straight)
  train.train_and_evaluate(config(2), resumed)
  train.train_and_evaluate(config(4), resumed)
  a, b = _losses(straight), _losses(resumed)
  assert sorted(a) == sorted(b) == [1, 2, 3, 4]
  np.testing.assert_array_equal([a[s] for s in a], [b[s] for s in a])

  built = builder.build(config(4))
  assert sorted(built.frozen.params) == ['teacher']
  item = os.path.join(resumed, 'checkpoints', '4', 'state')
  saved = ocp.PyTreeCheckpointer().metadata(item).item_metadata.tree
  want = {p: tuple(x.shape) for p, x in param_tree.flatten(
      built.abstract).items()}
  got = {p: tuple(m.shape) for p, m in param_tree.flatten(saved).items()}
  assert got == want
  n_frozen = len(param_tree.flatten(built.frozen.params['teacher']))
  n_params = len(param_tree.flatten(built.abstract_params))
  # params + Adam's mu and nu + one EMA, and 2 counters and the step.
  assert n_frozen > 0 and len(got) == 4 * n_params + 3


_FSDP_SCRIPT = r'''
import os, sys
os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
import jax
import numpy as np
import ml_collections as mlc
from visgen import config_lib, frozen, param_tree, sharding

assert jax.device_count() == 8
workdir, npz = sys.argv[1], sys.argv[2]
model = dict(name='mlp', dim=4, width=8, depth=1, num_classes=2)
c = mlc.ConfigDict()
c.sharding = config_lib.mesh_and_sharding('fsdp')
c.frozen = dict(w=dict(source='workdir:' + workdir, weights='raw'),
                f=dict(source=npz, model=model))
fz = frozen.build_frozen(c, sharding.make_mesh(c.sharding.mesh))
want = dict(np.load(npz))
for name in ('w', 'f'):
  x = param_tree.flatten(fz.params[name])['inp/kernel']
  assert x.sharding.spec == jax.sharding.PartitionSpec(None, 'fsdp')
  shards = sorted(x.addressable_shards, key=lambda s: s.index[1].start)
  assert len(shards) == 8 and shards[0].data.shape == (4, 1)
  for s in shards:
    np.testing.assert_array_equal(np.asarray(s.data),
                                  want['inp/kernel'][s.index])
print('OK')
'''


def test_frozen_parts_fsdp_sharded_on_8_devices(run_dir, tmp_path):
  workdir, want = run_dir
  npz = str(tmp_path / 'w.npz')
  weights_lib.save_npz(npz, want)
  root = os.path.join(os.path.dirname(__file__), '..')
  proc = subprocess.run(
      [sys.executable, '-c', _FSDP_SCRIPT, workdir, npz], cwd=root,
      env=dict(os.environ, PYTHONPATH=root), capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 0 and 'OK' in proc.stdout, proc.stderr[-3000:]
