"""8 fake CPU devices: single-device, data-parallel, FSDP and hybrid steps
agree; an FSDP checkpoint restores under data parallelism.

Runs in a subprocess because XLA_FLAGS must be set before JAX starts.
Tolerance: the sharded programs reduce in a different order, so losses and
parameters agree to float32 rounding (rtol 1e-5, atol 1e-6), not bitwise.
"""

import os
import subprocess
import sys
import textwrap

from jax.sharding import PartitionSpec as P

from visgen import sharding

ROOT = os.path.join(os.path.dirname(__file__), '..')

SCRIPT = textwrap.dedent(r'''
  import os, sys
  os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
  import jax
  jax.config.update('jax_disable_most_optimizations', True)  # CI speed.
  import numpy as np
  from tests.test_train import tiny_config
  from visgen import builder, checkpoint as ckpt_lib, sharding
  from visgen.data import digits, pipeline

  assert jax.device_count() == 8
  d = digits.load_digits_split('train')
  batches = [{'image': d['image'][i * 16:(i + 1) * 16],
              'label': d['label'][i * 16:(i + 1) * 16]} for i in range(2)]
  MESHES = {
      'single': ([('data', 1), ('fsdp', 1)], jax.devices()[:1]),
      'dp': ([('data', -1), ('fsdp', 1)], None),
      'fsdp': ([('data', 1), ('fsdp', -1)], None),
      'hybrid': ([('data', 2), ('fsdp', -1)], None),
  }

  def run(kind):
    c = tiny_config()
    c.sharding.mesh = MESHES[kind][0]
    mesh = sharding.make_mesh(c.sharding.mesh, MESHES[kind][1])
    b = builder.build(c, mesh)
    state = builder.create_state(b, jax.random.key(1))
    step = builder.make_train_step(b)
    axes = sharding.batch_axes(mesh, c.sharding.rules)
    losses = []
    for batch in batches:
      state, m = step(state, {}, pipeline.make_global_array(
          batch, mesh, batch_axes=axes), jax.random.key(2))
      losses.append(float(m['loss']))
    return c, mesh, b, state, losses

  results = {k: run(k) for k in MESHES}
  ref_losses = results['single'][4]
  ref_params = jax.tree.leaves(jax.device_get(results['single'][3]['params']))
  for kind, (c, mesh, b, state, losses) in results.items():
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
    for a, r in zip(jax.tree.leaves(jax.device_get(state['params'])),
                    ref_params):
      np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6)
    print(kind, losses)

  # FSDP really shards: the (32, 32) block kernel is split 8 ways.
  c, mesh, b, fsdp_state, _ = results['fsdp']
  kernel = fsdp_state['params']['blocks'][0]['fc1']['kernel'][...]
  assert 'fsdp' in str(kernel.sharding.spec), kernel.sharding
  assert kernel.addressable_shards[0].data.shape == (4, 32)
  dp_kernel = results['dp'][3]['params']['blocks'][0]['fc1']['kernel'][...]
  assert dp_kernel.addressable_shards[0].data.shape == (32, 32)

  # Save under FSDP, restore under data parallel.
  workdir = sys.argv[1]
  ckpt = ckpt_lib.Checkpointer(workdir, every=1, keep_last=1,
                               async_save=False)
  ckpt.save(2, fsdp_state)
  ckpt.close()
  c, mesh, b, _, _ = results['dp']
  restored, step = ckpt_lib.Checkpointer(
      workdir, every=1, keep_last=1).restore(b.abstract)
  assert step == 2
  r_kernel = restored['params']['blocks'][0]['fc1']['kernel'][...]
  assert r_kernel.addressable_shards[0].data.shape == (32, 32)
  for a, r in zip(jax.tree.leaves(jax.device_get(restored)),
                  jax.tree.leaves(jax.device_get(fsdp_state))):
    np.testing.assert_array_equal(a, r)
  print('OK')
''')


def test_single_dp_fsdp_hybrid_agree_and_fsdp_ckpt_restores_under_dp(
    tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, '-c', SCRIPT, str(tmp_path)],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  assert proc.stdout.strip().endswith('OK')


class _Mesh:
  shape = {'data': 2, 'fsdp': 4}


def test_fsdp_fallback_shards_largest_divisible_dim():
  # (1024, 512) fp32 = 2 MiB: the largest dim divisible by 4 is sharded.
  assert sharding.fsdp_spec((1024, 512), 4, _Mesh, 'fsdp', 1.0) == P(
      'fsdp', None)
  assert sharding.fsdp_spec((6, 2048), 4, _Mesh, 'fsdp', 0.0) == P(
      None, 'fsdp')
  # Too small to be worth it, or nothing divisible: replicated.
  assert sharding.fsdp_spec((1024, 512), 4, _Mesh, 'fsdp', 4.0) == P()
  assert sharding.fsdp_spec((3, 5), 4, _Mesh, 'fsdp', 0.0) == P()
