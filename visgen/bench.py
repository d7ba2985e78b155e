r"""Benchmark: train-step and sampling throughput against the machine's peak.

  python -m visgen.bench --config=visgen/bench_config.py --out=/tmp/b.json
  python -m visgen.bench --config=visgen/bench_config.py:dtype=bfloat16
  python -m visgen.bench --config=configs/quickstart.py \
      --config.data.batch_size=64

Measures, in one process: the square-matmul peak (fp32, and bf16 inputs with
fp32 accumulation), compile time, FLOPs per train step and per sampling call
from XLA's cost analysis, step time (warm-up steps excluded, median of the
timed ones), achieved FLOP/s and its share of the measured peak, sampling
images/s, and peak RSS with page-fault and system-time counts. Prints a
Markdown table and writes JSON (`--out`).

The step is the project's own: `builder.build` (model, frozen parts, task,
optimizer, sharded state) and `builder.make_train_step` (loss -> grads ->
AdamW -> EMA, jitted with donation as training does), on a fixed synthetic
batch shaped by the task's `batch_spec`. Sampling is the task's own
`sample` with the config's sampler (steps from `bench.sample_steps`).

Huge pages: XLA's CPU runtime page-faults heavily on large activations; glibc
serves them from transparent huge pages with `GLIBC_TUNABLES=
glibc.malloc.hugetlb=1`, which must be set when the process starts. The
benchmark re-executes itself with it (`--hugepages=false` to measure
without); entry points can call `ensure_hugepages()` first thing.
"""

import json
import os
import resource
import statistics
import sys
import time
from typing import Any

from visgen.hugepages import HUGEPAGE_TUNABLE  # noqa: E402
from visgen.hugepages import ensure_hugepages  # noqa: E402
from visgen.hugepages import hugepages_enabled  # noqa: E402

# Decide before absl/JAX import anything heavy.
if __name__ == '__main__':
  if not any(a in ('--hugepages=false', '--nohugepages') for a in sys.argv):
    ensure_hugepages()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from visgen import bench_config
from visgen import config_loader

# pylint: enable=g-import-not-at-top,wrong-import-position

# -----------------------------------------------------------------------------
# Measurements.
# -----------------------------------------------------------------------------


def _usage() -> dict[str, float]:
  ru = resource.getrusage(resource.RUSAGE_SELF)
  return dict(user_s=ru.ru_utime, sys_s=ru.ru_stime, minflt=ru.ru_minflt,
              maxrss_mib=ru.ru_maxrss / 1024.0)


def _delta(a: dict, b: dict) -> dict:
  return {k: b[k] - a[k] for k in ('user_s', 'sys_s', 'minflt')}


def matmul_peak(*, n: int = 2048, repeats: int = 5) -> dict[str, dict]:
  """GFLOP/s of jitted n x n matmuls: fp32, and bf16 with fp32 accumulation.

  Returns {'fp32': {...}, 'bf16': {...}} with the best and median rate; the
  best run is the machine's peak (shared machines only ever slow it down).
  """
  out = {}
  ka, kb = jax.random.split(jax.random.key(0))
  for name, dtype in (('fp32', jnp.float32), ('bf16', jnp.bfloat16)):
    a = jax.random.normal(ka, (n, n), dtype)
    b = jax.random.normal(kb, (n, n), dtype)
    f = jax.jit(lambda a, b: jax.lax.dot(
        a, b, preferred_element_type=jnp.float32))
    f(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      f(a, b).block_until_ready()
      times.append(time.perf_counter() - t0)
    flop = 2.0 * n ** 3
    out[name] = dict(n=n, best_gflops=flop / min(times) / 1e9,
                     median_gflops=flop / statistics.median(times) / 1e9)
  return out


def _compile(jitted, *args) -> tuple[Any, dict]:
  t0 = time.perf_counter()
  lowered = jitted.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return compiled, dict(lower_s=t1 - t0, compile_s=t2 - t1,
                        gflop=float(cost.get('flops', float('nan'))) / 1e9)


def synthetic_batch(b, batch_size: int) -> dict:
  """A fixed random batch shaped like the task's data (`task.batch_spec`):
  uint8 over 0..255 (pixels), other integers 0 or 1 (valid labels and ids
  of any task), normal floats."""
  from visgen import sharding  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  batch = {}
  for key, spec in b.task.batch_spec(batch_size).items():
    dtype = np.dtype(spec.dtype)
    if dtype.kind in 'iu':
      hi = 256 if dtype == np.uint8 else 2
      batch[key] = rng.integers(0, hi, spec.shape, dtype=dtype)
    else:
      batch[key] = rng.normal(size=spec.shape).astype(dtype)
  return jax.device_put(batch, sharding.data_sharding(
      b.mesh, b.config.sharding.rules))


def bench_train(config, mesh) -> tuple[dict, Any, Any]:
  """Compiles and times the project's train step; returns (results, b, st)."""
  from visgen import builder  # pylint: disable=g-import-not-at-top

  knobs = dict(bench_config.bench_defaults(), **dict(config.get('bench', {})))
  b = builder.build(config, mesh)
  state = builder.create_state(b, jax.random.key(1))
  n_params = sum(x.size for x in jax.tree.leaves(state['params']))
  batch = synthetic_batch(b, int(config.data.batch_size))
  jitted = builder.make_train_step(b)
  rng = jax.random.key(2)
  frozen = b.frozen.params
  compiled, res = _compile(jitted, state, frozen, batch, rng)
  times, losses = [], []
  u0 = None
  for i in range(knobs['warmup_steps'] + knobs['steps']):
    if i == knobs['warmup_steps']:
      u0 = _usage()
    t0 = time.perf_counter()
    state, metrics = compiled(state, frozen, batch, rng)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
    losses.append(float(metrics['loss']))
  timed = times[knobs['warmup_steps']:]
  step_s = statistics.median(timed)
  res.update(
      params_m=n_params / 1e6, batch=int(config.data.batch_size),
      step_s=step_s, step_times_s=timed, warmup_times_s=times[
          :knobs['warmup_steps']],
      spread=(max(timed) - min(timed)) / step_s,
      steps_per_s=1.0 / step_s,
      images_per_s=int(config.data.batch_size) / step_s,
      gflops=res['gflop'] / step_s, losses=losses,
      usage_per_step={k: v / len(timed) for k, v in
                      _delta(u0, _usage()).items()})
  if not all(np.isfinite(losses)):
    raise FloatingPointError(f'Non-finite loss in the benchmark: {losses}')
  return res, b, state


def bench_sample(b, params) -> dict:
  """Times one network evaluation and one jitted sampling call.

  The network evaluation is the task's loss (one forward pass) on a
  synthetic batch of the sampling batch size. XLA's cost analysis counts a
  loop body once, so the sampler's FLOP rate is derived from that forward
  pass, not from the sampler.
  """
  from visgen import builder  # pylint: disable=g-import-not-at-top

  config, task = b.config, b.task
  knobs = dict(bench_config.bench_defaults(), **dict(config.get('bench', {})))
  n = int(knobs['sample_batch'] or config.data.batch_size)
  frozen = b.frozen.params
  key = jax.random.key(3)
  batch = synthetic_batch(b, n)
  task_state = task.init_state(key)
  fwd, res = _compile(jax.jit(lambda p, ts, bt: task.loss(
      p, frozen, ts, bt, key)[0]), params, task_state, batch)
  jax.block_until_ready(fwd(params, task_state, batch))
  times = []
  for _ in range(3):
    t0 = time.perf_counter()
    jax.block_until_ready(fwd(params, task_state, batch))
    times.append(time.perf_counter() - t0)
  res = dict(forward_gflop=res['gflop'], forward_compile_s=res['compile_s'],
             forward_s=statistics.median(times))
  res['forward_gflops'] = res['forward_gflop'] / res['forward_s']
  cond = task.sample_cond(n)
  sample = builder.make_sample_fn(b, n)
  guidance = builder.guidance_scale(config)
  compiled, comp = _compile(sample, params, frozen, cond, key, guidance)
  times = []
  for _ in range(1 + int(knobs['sample_repeats'])):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(params, frozen, cond, key, guidance))
    times.append(time.perf_counter() - t0)
  t = statistics.median(times[1:])
  res.update(sampler=f'{config.task.name} task, sampler '
             f'{config.sampler.get("name")}', n=n,
             steps=int(config.sampler.get('steps', 0)),
             compile_s=comp['compile_s'], time_s=t, images_per_s=n / t,
             forward_equivalents=t / res['forward_s'])
  return res


# -----------------------------------------------------------------------------
# Report.
# -----------------------------------------------------------------------------


def run(config, *, sample: bool = True) -> dict:
  """All measurements for one config, as a JSON-ready dict."""
  from visgen import sharding  # pylint: disable=g-import-not-at-top

  knobs = dict(bench_config.bench_defaults(), **dict(config.get('bench', {})))
  if knobs['sample_steps']:  # The sampler the task builds, at bench steps.
    config = config.copy_and_resolve_references()
    config.sampler.steps = int(knobs['sample_steps'])
  out: dict[str, Any] = dict(
      model=dict(config.model), devices=str(jax.devices()),
      jax=jax.__version__, hugepages=hugepages_enabled(),
      glibc_tunables=os.environ.get('GLIBC_TUNABLES', ''),
      loadavg=os.getloadavg())
  out['peak'] = matmul_peak(n=knobs['peak_n'], repeats=knobs['peak_repeats'])
  mesh = sharding.make_mesh(config.sharding.mesh)
  out['train'], b, state = bench_train(config, mesh)
  if sample:
    # Sampling runs other modules' code (task, samplers); if it breaks, the
    # minutes of train-step measurement above are still reported.
    try:
      out['sample'] = bench_sample(b, state['params'])
    except Exception as e:  # pylint: disable=broad-except
      out['sample_error'] = f'{type(e).__name__}: {e}'
  # Peak again after the run: the share uses the best of both, so a busy
  # moment during the first measurement does not flatter the model.
  again = matmul_peak(n=knobs['peak_n'], repeats=knobs['peak_repeats'])
  for k, v in again.items():
    out['peak'][k]['best_gflops'] = max(out['peak'][k]['best_gflops'],
                                        v['best_gflops'])
  dtype = str(config.model.get('dtype', 'float32'))
  ref = 'bf16' if 'bfloat16' in dtype else 'fp32'
  peak = out['peak'][ref]['best_gflops']
  out['train']['share_of_peak'] = out['train']['gflops'] / peak
  # On a shared machine the fastest step and the fastest matmul are the
  # least disturbed measurements of each; their ratio is the steadier one.
  best = out['train']['gflop'] / min(out['train']['step_times_s'])
  out['train']['share_of_peak_best_step'] = best / peak
  out['train']['peak_ref'] = ref
  out['max_rss_gib'] = _usage()['maxrss_mib'] / 1024.0
  out['loadavg_end'] = os.getloadavg()
  return out


def markdown(r: dict) -> str:
  t, p = r['train'], r['peak']
  rows = [
      ('model', ', '.join(f'{k}={v}' for k, v in r['model'].items())),
      ('huge pages (GLIBC_TUNABLES)', str(r['hugepages'])),
      ('matmul peak fp32 / bf16 (GFLOP/s)',
       f"{p['fp32']['best_gflops']:.0f} / {p['bf16']['best_gflops']:.0f}"),
      ('params', f"{t['params_m']:.2f} M"),
      ('train GFLOP/step (XLA)', f"{t['gflop']:.1f}"),
      ('lower + compile (s)', f"{t['lower_s']:.1f} + {t['compile_s']:.1f}"),
      ('step (s), median of timed',
       f"{t['step_s']:.3f} (" + ', '.join(f'{x:.2f}' for x in
                                          t['step_times_s']) + ')'),
      ('steps/s, images/s', f"{t['steps_per_s']:.3f}, "
       f"{t['images_per_s']:.1f}"),
      ('achieved GFLOP/s', f"{t['gflops']:.1f}"),
      (f"share of {t['peak_ref']} peak (median step / fastest step)",
       f"{100 * t['share_of_peak']:.1f}% / "
       f"{100 * t['share_of_peak_best_step']:.1f}%"),
      ('per step: user / sys s, minor faults',
       f"{t['usage_per_step']['user_s']:.2f} / "
       f"{t['usage_per_step']['sys_s']:.2f}, "
       f"{t['usage_per_step']['minflt']:.0f}"),
  ]
  if 'sample' in r:
    s = r['sample']
    rows += [
        ('sampling', f"{s['n']} images x {s['steps']} steps, {s['sampler']}"),
        ('forward pass (s), GFLOP, GFLOP/s',
         f"{s['forward_s']:.3f}, {s['forward_gflop']:.1f}, "
         f"{s['forward_gflops']:.1f}"),
        ('sampling compile (s)', f"{s['compile_s']:.1f}"),
        ('sampling time (s), images/s, in forward passes',
         f"{s['time_s']:.2f}, {s['images_per_s']:.2f}, "
         f"{s['forward_equivalents']:.1f}"),
    ]
  if 'sample_error' in r:
    rows.append(('sampling failed', r['sample_error'][:200]))
  rows += [('peak RSS', f"{r['max_rss_gib']:.2f} GiB"),
           ('load average start / end',
            ' / '.join(f'{x[0]:.1f}' for x in (r['loadavg'],
                                               r['loadavg_end'])))]
  lines = ['| metric | value |', '|---|---|']
  lines += [f'| {k} | {v} |' for k, v in rows]
  return '\n'.join(lines)


def define_flags() -> dict:
  """Defines the CLI flags (only when run as a program: visgen.main defines
  its own --config, and both may be imported in one test process)."""
  return dict(
      config=config_loader.define_flag(
          'config', 'Config file (visgen/bench_config.py[:args] or '
          'configs/X.py[:args]).'),
      out=flags.DEFINE_string('out', None, 'Write the results JSON here.'),
      sample=flags.DEFINE_bool('sample', True, 'Also time sampling.'),
      hugepages=flags.DEFINE_bool(
          'hugepages', True, 'Re-exec with GLIBC_TUNABLES='
          f'{HUGEPAGE_TUNABLE} (read before flag parsing).'))


def main(flag_values: dict) -> None:
  r = run(flag_values['config'].value, sample=flag_values['sample'].value)
  print(markdown(r))
  if flag_values['out'].value:
    with open(flag_values['out'].value, 'w') as f:
      json.dump(r, f, indent=2, default=str)


if __name__ == '__main__':
  _FLAGS = define_flags()
  flags.mark_flags_as_required(['config'])
  app.run(lambda argv: main(_FLAGS))
