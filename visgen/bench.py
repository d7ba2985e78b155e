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


class TrainBench:
  """The project's train step, compiled and warmed up; `round(n)` times n
  more steps (so that rounds can alternate with a peer's)."""

  def __init__(self, config, mesh):
    from visgen import builder  # pylint: disable=g-import-not-at-top

    self.knobs = dict(bench_config.bench_defaults(),
                      **dict(config.get('bench', {})))
    self.config = config
    self.b = builder.build(config, mesh)
    self.state = builder.create_state(self.b, jax.random.key(1))
    self.n_params = sum(x.size for x in jax.tree.leaves(
        self.state['params']))
    self.batch_size = int(config.data.batch_size)
    self.batch = synthetic_batch(self.b, self.batch_size)
    self.rng = jax.random.key(2)
    self.frozen = self.b.frozen.params
    self.compiled, self.res = _compile(
        builder.make_train_step(self.b), self.state, self.frozen, self.batch,
        self.rng)
    self.losses = []
    self.warmup_times = self.round(self.knobs['warmup_steps'])
    self.times, self.usage = [], {}

  def round(self, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
      t0 = time.perf_counter()
      self.state, metrics = self.compiled(self.state, self.frozen,
                                          self.batch, self.rng)
      jax.block_until_ready((self.state, metrics))
      times.append(time.perf_counter() - t0)
      self.losses.append(float(metrics['loss']))
    return times

  def timed_round(self, steps: int) -> list[float]:
    """A measured round: its times and resource usage count in `results`."""
    u = _usage()
    times = self.round(steps)
    for k, v in _delta(u, _usage()).items():
      self.usage[k] = self.usage.get(k, 0.0) + v
    self.times += times
    return times

  def results(self) -> dict:
    timed = self.times
    step_s = statistics.median(timed)
    res = dict(self.res)
    res.update(
        params_m=self.n_params / 1e6, batch=self.batch_size,
        step_s=step_s, step_times_s=timed, warmup_times_s=self.warmup_times,
        spread=(max(timed) - min(timed)) / step_s,
        steps_per_s=1.0 / step_s, images_per_s=self.batch_size / step_s,
        gflops=res['gflop'] / step_s, losses=self.losses,
        usage_per_step={k: v / len(timed) for k, v in self.usage.items()})
    if not all(np.isfinite(self.losses)):
      raise FloatingPointError(
          f'Non-finite loss in the benchmark: {self.losses}')
    return res


def bench_train(config, mesh) -> tuple[dict, Any, Any]:
  """Compiles and times the project's train step; returns (results, b, st)."""
  tb = TrainBench(config, mesh)
  tb.timed_round(tb.knobs['steps'])
  return tb.results(), tb.b, tb.state


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
  if not config.get('sampler'):
    # A task without a sampler (an autoencoder): the train step only.
    sample = False
  elif knobs['sample_steps']:  # The sampler the task builds, at bench steps.
    config = config.copy_and_resolve_references()
    with config.unlocked():
      config.sampler.steps = int(knobs['sample_steps'])
  out: dict[str, Any] = dict(
      model=dict(config.model), devices=str(jax.devices()),
      jax=jax.__version__, hugepages=hugepages_enabled(),
      glibc_tunables=os.environ.get('GLIBC_TUNABLES', ''),
      loadavg=os.getloadavg(), **machine())
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


# -----------------------------------------------------------------------------
# The PyTorch peer (`--peer=torch`): benchmarks/torch_peer.py in a subprocess.
# -----------------------------------------------------------------------------

PEER_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'benchmarks', 'torch_peer.py')
PEERS = ('torch',)
INSTALL_HINT = (
    'Install the optional extra in its own environment: `python3 -m venv '
    '/tmp/venv-torch && /tmp/venv-torch/bin/pip install -r '
    'requirements-torch.txt`, then pass --peer_python=/tmp/venv-torch/bin/'
    'python (or set VISGEN_TORCH_PYTHON to it).')


def peer_python(flag_value: str | None = None) -> str:
  """The python that runs the peer: the flag, $VISGEN_TORCH_PYTHON, else
  `python` on PATH; it must import torch (else a UserError, exit 2)."""
  import shutil  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  from visgen import validate  # pylint: disable=g-import-not-at-top

  py = (flag_value or os.environ.get('VISGEN_TORCH_PYTHON')
        or shutil.which('python') or sys.executable)
  try:
    ok = subprocess.run([py, '-c', 'import torch'], capture_output=True,
                        timeout=300).returncode == 0
  except OSError:
    ok = False
  if not ok:
    raise validate.UserError(
        f'--peer=torch needs PyTorch, and {py} cannot import torch. '
        + INSTALL_HINT)
  return py


def check_peers(names: list[str]) -> list[str]:
  from visgen import validate  # pylint: disable=g-import-not-at-top

  bad = [n for n in names if n not in PEERS]
  if bad:
    raise validate.UserError(
        f'Unknown --peer {", ".join(bad)}. Valid choices: {", ".join(PEERS)} '
        '(diffusers\' DiT has per-block label embeddings, so it is not the '
        'same shape; it is not a peer yet).')
  return names


def peer_spec(config, *, compile_: bool) -> dict:
  """What the peer needs to build the same model and step (JSON-ready)."""
  knobs = dict(bench_config.bench_defaults(), **dict(config.get('bench', {})))
  model = {k: (list(v) if isinstance(v, tuple) else v)
           for k, v in config.model.to_dict().items()}
  o = config.optim
  return dict(
      model=model, num_classes=int(config.task.get('num_classes', 0)),
      label_dropout=float(config.task.get('label_dropout', 0.0)),
      x_shape=list(config.task.x_shape), batch=int(config.data.batch_size),
      dtype=str(config.model.get('dtype', 'float32')),
      optim=dict(lr=float(o.lr), b1=float(o.b1), b2=float(o.b2),
                 eps=float(o.eps), weight_decay=float(o.weight_decay),
                 grad_clip=float(o.grad_clip or 0.0)),
      ema_decays=[float(d) for d in config.get('ema_decays', ())],
      compile=bool(compile_), warmup_steps=int(knobs['warmup_steps']),
      sample=dict(n=int(knobs['sample_batch'] or config.data.batch_size),
                  steps=int(knobs['sample_steps'] or config.sampler.steps),
                  cfg_scale=float(config.sampler.get('cfg_scale', 1.0))))


class PeerProcess:
  """benchmarks/torch_peer.py --serve: one JSON line per command."""

  def __init__(self, python: str, spec: dict):
    import subprocess  # pylint: disable=g-import-not-at-top

    # The peer runs with its default allocator: visgen's huge-page tunable
    # (which `ensure_hugepages` put into this process's environment) is
    # visgen's own setting, not PyTorch's.
    env = dict(os.environ)
    tun = [t for t in env.get('GLIBC_TUNABLES', '').split(':')
           if t and t != HUGEPAGE_TUNABLE]
    env['GLIBC_TUNABLES'] = ':'.join(tun)
    self.glibc_tunables = env['GLIBC_TUNABLES']
    self.proc = subprocess.Popen(
        [python, PEER_SCRIPT, '--serve', '--spec', json.dumps(spec)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    self.ready = self._read()

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f'The peer {PEER_SCRIPT} exited (status '
                         f'{self.proc.wait()}); see its stderr above.')
    return json.loads(line)

  def call(self, **cmd) -> dict:
    self.proc.stdin.write(json.dumps(cmd) + '\n')
    self.proc.stdin.flush()
    return self._read()

  def close(self) -> dict:
    out = self.call(cmd='exit')
    self.proc.wait()
    out['rusage_children_maxrss_gib'] = resource.getrusage(
        resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20
    return out


def machine() -> dict[str, str]:
  """The CPU model and the XLA_FLAGS in force: timings differ by both."""
  cpu = ''
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next((l.split(':', 1)[1].strip() for l in f
                  if l.startswith('model name')), '')
  except OSError:
    pass
  return dict(cpu=cpu, xla_flags=os.environ.get('XLA_FLAGS', ''))


def _uptime() -> str:
  import subprocess  # pylint: disable=g-import-not-at-top
  try:
    return subprocess.run(['uptime'], capture_output=True, text=True,
                          timeout=10).stdout.strip()
  except OSError:
    return ''


def run_with_peer(config, *, python: str, compile_: bool = False,
                  rounds: int = 3, sample: bool = True,
                  sample_rounds: int = 2) -> dict:
  """visgen's train step and the PyTorch peer's, alternating rounds.

  Each is compiled and warmed up first (visgen, then the peer, never
  overlapping a measurement); then `rounds` rounds of `bench.steps` steps,
  in the order V P, P V, V P, ... so neither always runs first. step_s and
  peer_step_s are medians of all timed steps; ratio = step_s / peer_step_s
  (< 1: visgen is faster). Sampling (`bench.sample_steps` Euler steps with
  CFG, `bench.sample_batch` images) alternates the same way. Peak RSS: each
  process's own ru_maxrss (the peer's is read after it exits).
  """
  from visgen import sharding  # pylint: disable=g-import-not-at-top

  knobs = dict(bench_config.bench_defaults(), **dict(config.get('bench', {})))
  if knobs['sample_steps']:
    config = config.copy_and_resolve_references()
    config.sampler.steps = int(knobs['sample_steps'])
  dtype = str(config.model.get('dtype', 'float32'))
  out: dict[str, Any] = dict(
      model=dict(config.model), precision='bf16' if 'bfloat16' in dtype
      else 'fp32', devices=str(jax.devices()), jax=jax.__version__,
      hugepages=hugepages_enabled(), loadavg=os.getloadavg(), **machine(),
      uptime_start=_uptime(), protocol=(
          f'{rounds} alternating rounds of {knobs["steps"]} steps after '
          f'{knobs["warmup_steps"]} warm-up steps each; medians'))
  mesh = sharding.make_mesh(config.sharding.mesh)
  tb = TrainBench(config, mesh)
  spec = peer_spec(config, compile_=compile_)
  peer = PeerProcess(python, spec)
  ready = peer.ready
  out['peer'] = dict(name='torch' + ('+compile' if compile_ else ' eager'),
                     params=ready['params'], torch=ready['torch'],
                     threads=ready['threads'], setup_s=ready['setup_s'],
                     warmup_times_s=ready['warmup_times_s'],
                     glibc_tunables=peer.glibc_tunables)
  peer_times, rounds_log = [], []
  try:
    for r in range(rounds):
      order = ('visgen', 'peer') if r % 2 == 0 else ('peer', 'visgen')
      log = {}
      for who in order:
        if who == 'visgen':
          log['visgen'] = tb.timed_round(knobs['steps'])
        else:
          times = peer.call(cmd='train', steps=knobs['steps'])['times']
          peer_times += times
          log['peer'] = times
      rounds_log.append(dict(order=list(order), **log))
      print(f'round {r}: visgen {log["visgen"]} peer {log["peer"]}',
            file=sys.stderr, flush=True)
    out['train'] = tb.results()
    out['rounds'] = rounds_log
    out['peer']['step_times_s'] = peer_times
    if sample:
      vs, ps = [], []
      key = jax.random.key(3)
      from visgen import builder  # pylint: disable=g-import-not-at-top
      n = spec['sample']['n']
      cond = tb.b.task.sample_cond(n)
      fn, comp = _compile(builder.make_sample_fn(tb.b, n),
                          tb.state['params'], tb.frozen, cond, key,
                          builder.guidance_scale(config))
      guidance = builder.guidance_scale(config)
      jax.block_until_ready(fn(tb.state['params'], tb.frozen, cond, key,
                               guidance))
      peer_warm = None
      for r in range(sample_rounds):
        order = ('visgen', 'peer') if r % 2 == 0 else ('peer', 'visgen')
        for who in order:
          if who == 'visgen':
            t0 = time.perf_counter()
            jax.block_until_ready(fn(tb.state['params'], tb.frozen, cond,
                                     key, guidance))
            vs.append(time.perf_counter() - t0)
          else:
            res = peer.call(cmd='sample', repeats=1)
            peer_warm = peer_warm or res['warmup_s']
            ps += res['times']
      out['sample'] = dict(
          n=n, steps=spec['sample']['steps'], sampler=str(
              config.sampler.get('name')), cfg_scale=spec['sample'][
                  'cfg_scale'], forward_passes_per_step=2,
          compile_s=comp['compile_s'], times_s=vs, peer_times_s=ps,
          peer_warmup_s=peer_warm)
  finally:
    closed = peer.close()
  step_s = out['train']['step_s']
  peer_step_s = statistics.median(peer_times)
  out.update(
      step_s=step_s, peer_step_s=peer_step_s, ratio=step_s / peer_step_s,
      fastest_step_s=min(out['train']['step_times_s']),
      peer_fastest_step_s=min(peer_times),
      params=tb.n_params, peer_params=ready['params'],
      peak_rss_gib=_usage()['maxrss_mib'] / 1024.0,
      peer_peak_rss_gib=closed['maxrss_gib'],
      peer_rusage_children_maxrss_gib=closed['rusage_children_maxrss_gib'],
      loadavg_end=os.getloadavg(), uptime_end=_uptime())
  if 'sample' in out:
    s = out['sample']
    out['sample_images_per_s'] = s['n'] / statistics.median(s['times_s'])
    out['peer_sample_images_per_s'] = s['n'] / statistics.median(
        s['peer_times_s'])
    out['sample_ratio'] = (out['sample_images_per_s']
                           / out['peer_sample_images_per_s'])
  return out


def peer_markdown(r: dict) -> str:
  p = r['peer']
  rows = [
      ('model', ', '.join(f'{k}={v}' for k, v in r['model'].items())),
      ('precision', r['precision']),
      ('params visgen / peer', f"{r['params']} / {r['peer_params']}"),
      ('protocol', r['protocol']),
      ('peer', f"{p['name']} (torch {p['torch']}, {p['threads']} threads)"),
      ('visgen step (s), median / fastest',
       f"{r['step_s']:.3f} / {r['fastest_step_s']:.3f}"),
      ('peer step (s), median / fastest',
       f"{r['peer_step_s']:.3f} / {r['peer_fastest_step_s']:.3f}"),
      ('ratio visgen / peer step (< 1: visgen faster)', f"{r['ratio']:.3f}"),
      ('peak RSS visgen / peer (GiB)',
       f"{r['peak_rss_gib']:.2f} / {r['peer_peak_rss_gib']:.2f}"),
  ]
  if 'sample_images_per_s' in r:
    s = r['sample']
    rows += [(f"sampling images/s ({s['n']} images, {s['steps']} {s['sampler']}"
              ' steps, CFG) visgen / peer',
              f"{r['sample_images_per_s']:.2f} / "
              f"{r['peer_sample_images_per_s']:.2f}")]
  rows += [('load average start / end',
            f"{r['loadavg'][0]:.1f} / {r['loadavg_end'][0]:.1f}")]
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
      peer=flags.DEFINE_string(
          'peer', None, 'Also run a PyTorch peer of the same model and '
          'step, alternating rounds: torch (benchmarks/torch_peer.py).'),
      peer_compile=flags.DEFINE_bool(
          'peer_compile', False, 'torch.compile the peer (default mode).'),
      peer_python=flags.DEFINE_string(
          'peer_python', None, 'Python with torch for the peer (default: '
          '$VISGEN_TORCH_PYTHON, else `python`).'),
      peer_rounds=flags.DEFINE_integer(
          'peer_rounds', 3, 'Alternating measurement rounds with --peer.'),
      hugepages=flags.DEFINE_bool(
          'hugepages', True, 'Re-exec with GLIBC_TUNABLES='
          f'{HUGEPAGE_TUNABLE} (read before flag parsing).'))


def main(flag_values: dict) -> int:
  from visgen import validate  # pylint: disable=g-import-not-at-top

  out_path = flag_values['out'].value
  try:
    if flag_values['peer'].value:
      names = check_peers([n.strip() for n in
                           flag_values['peer'].value.split(',') if n.strip()])
      del names  # Only 'torch' so far.
      python = peer_python(flag_values['peer_python'].value)
      r = run_with_peer(flag_values['config'].value, python=python,
                        compile_=flag_values['peer_compile'].value,
                        rounds=flag_values['peer_rounds'].value,
                        sample=flag_values['sample'].value)
      print(peer_markdown(r))
    else:
      r = run(flag_values['config'].value,
              sample=flag_values['sample'].value)
      print(markdown(r))
  except validate.UserError as e:
    return validate.report(e)
  if out_path:
    with open(out_path, 'w') as f:
      json.dump(r, f, indent=2, default=str)
  return 0


if __name__ == '__main__':
  _FLAGS = define_flags()
  flags.mark_flags_as_required(['config'])
  app.run(lambda argv: sys.exit(main(_FLAGS)))
