"""Softmax against linear attention: time and memory against tokens, and the
constant-state block rollout's memory against video length.

  python -m experiments.attention_scaling --workdir=/tmp/as
  python -m experiments.attention_scaling --workdir=/tmp/as --parts=rollout

1. `attention` (issue 13, item 2): one attention block (fused qkv, 3-D RoPE,
   attention, output projection; `linear_attention.VideoAttention`) at
   width 64 / 2 heads, batch 1, over N = 256 ... 16384 tokens laid out as
   (N / 256, 16, 16). Time = wall clock of a jitted forward + backward
   (gradients of sum(out^2) with respect to the input and the weights),
   fastest of repeated runs, warm-up excluded. Memory = XLA's compiled
   memory analysis of that program
   (arguments + outputs + temporaries - aliased; deterministic, no RSS).
   Slopes are least-squares fits of log time / log memory against log N
   over N >= 1024 (softmax ~2 for time and memory, linear ~1).
2. `rollout` (item 4): a linear-attention video DiT generates a video block
   by block (`VideoDiT.step`): each block of F frames is denoised from noise
   with a flow-matching Euler sampler given the past's running sums, then
   its clean frames are fed once (t = 0) to commit them to the state. The
   per-block program is the same for every block, so the rollout's device
   memory is its compiled peak plus the state, whatever the length; we
   report it at 16, 64 and 256 frames beside (a) the same rollout compiled as
   one `lax.scan` over all blocks (temporaries only; the output video itself
   grows), (b) the block-causal full-sequence forward (training-style, all
   frames at once) and (c) the key-value cache a softmax model would keep.
   Each length is also run end to end (wall clock reported).
3. `trained` (with --model_config and --model_workdir): the same rollout
   with a trained block-causal video model (`configs/video_shapes.py`,
   `VideoTask.rollout`), 16 / 64 / 256 frames of 4 class-conditional
   videos written as DIR/rollout_<frames>.gif and .npz, with the compiled
   peak of its per-block program and the state size.

Writes DIR/results.json {"attention_scaling": [{"tokens", "linear_s",
"softmax_s", "linear_gib", "softmax_gib"}, ...], "slopes": {...},
"crossover_tokens": int | null, "memory_gib_by_frames": {"16", "64", "256"},
"rollout": {...}}, DIR/attention_scaling.png (log-log) and prints Markdown
tables.
"""

import argparse
import json
import os
import time

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from visgen.data import preprocess
from visgen.models import functional
from visgen.models import linear_attention as la
from visgen.models import video_dit

GIB = 2.0 ** 30
TOKENS = (256, 512, 1024, 2048, 4096, 8192, 16384)


def compiled_bytes(compiled) -> int:
  """Peak bytes of a compiled program from XLA's memory analysis:
  arguments + outputs + temporaries - buffers aliased between them."""
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes
             + m.temp_size_in_bytes - m.alias_size_in_bytes)


def _time(fn, *args, min_time=2.0, max_reps=20) -> float:
  """Fastest of repeated runs (>= 2, until min_time s or max_reps): the
  2 CPU cores are shared, and the minimum is the least disturbed."""
  jax.block_until_ready(fn(*args))  # Warm-up (and compile).
  times = []
  while len(times) < max_reps and (len(times) < 2
                                   or sum(times) < min_time):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return min(times)


def attention_program(kind: str, tokens: int, *, width: int = 64,
                      heads: int = 2, side: int = 16):
  """(jitted fwd+bwd, args) of one attention block over `tokens` tokens."""
  if tokens % (side * side):
    raise ValueError(f'tokens must be a multiple of {side * side}.')
  grid = (tokens // (side * side), side, side)
  attn = la.VideoAttention(width, heads, rngs=nnx.Rngs(0), kind=kind)
  graphdef, params = functional.split_model(attn)
  angles = la.rope_3d_angles(grid, width // heads)

  def loss(p, x):
    out = nnx.merge(graphdef, p)(x, angles=angles)
    return jnp.sum(jnp.square(out))

  fn = jax.jit(jax.grad(loss, argnums=(0, 1)))
  x = jnp.asarray(np.random.default_rng(0).standard_normal(
      (1, tokens, width)), jnp.float32)
  return fn, (params, x)


def fit_slope(xs, ys) -> float:
  return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def attention_scaling(tokens=TOKENS, *, max_run_gib: float = 6.0,
                      log=print) -> dict:
  """Rows {"tokens", "linear_s", "softmax_s", "linear_gib", "softmax_gib"};
  a program whose compiled peak exceeds max_run_gib is compiled (memory)
  but not timed (its time is null)."""
  rows = []
  for n in tokens:
    row = {'tokens': int(n)}
    for kind in ('linear', 'softmax'):
      fn, args = attention_program(kind, n)
      gib = compiled_bytes(fn.lower(*args).compile()) / GIB
      row[f'{kind}_gib'] = gib
      row[f'{kind}_s'] = _time(fn, *args) if gib <= max_run_gib else None
    log(f'  tokens={n}: ' + ', '.join(
        f'{k}={v:.4g}' for k, v in row.items()
        if k != 'tokens' and v is not None))
    rows.append(row)
  return rows


def summarize(rows, *, fit_from: int = 1024) -> dict:
  out = {}
  for kind in ('linear', 'softmax'):
    for what, unit in (('s', 'time'), ('gib', 'memory')):
      pts = [(r['tokens'], r[f'{kind}_{what}']) for r in rows
             if r['tokens'] >= fit_from and r[f'{kind}_{what}']]
      out[f'{kind}_{unit}_slope'] = (fit_slope(*zip(*pts)) if len(pts) > 1
                                     else None)
  cross = [r['tokens'] for r in rows
           if r['linear_s'] and r['softmax_s'] and r['linear_s']
           < r['softmax_s']]
  return {'slopes': out, 'crossover_tokens': min(cross) if cross else None}


def plot(rows, path: str):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, what, label in ((axes[0], 's', 'fwd+bwd time (s)'),
                          (axes[1], 'gib', 'compiled peak memory (GiB)')):
    for kind, style in (('linear', 'o-'), ('softmax', 's--')):
      pts = [(r['tokens'], r[f'{kind}_{what}']) for r in rows
             if r[f'{kind}_{what}']]
      if not pts:
        continue
      xs, ys = zip(*pts)
      big = [(x, y) for x, y in pts if x >= 1024]
      slope = fit_slope(*zip(*big)) if len(big) > 1 else float('nan')
      ax.loglog(xs, ys, style, base=2, label=f'{kind} (slope {slope:.2f})')
    ax.set_xlabel('tokens')
    ax.set_ylabel(label)
    ax.grid(True, which='both', alpha=0.3)
    ax.legend()
  fig.suptitle('One attention block, width 64, 2 heads, batch 1 (CPU)')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


# -- Rollout memory ------------------------------------------------------------

ROLLOUT_MODEL = dict(num_frames=4, input_size=32, in_channels=3,
                     patch=(1, 4, 4), width=128, depth=4, heads=4,
                     attention='linear', num_classes=10, block_frames=4)


def _rollout_fns(model, graphdef, *, steps: int):
  """generate_block(params, state, key, cond) -> (frames, new_state): Euler
  steps of the flow-matching ODE (x_t = (1 - t) x0 + t eps, the network
  read as a velocity) from t = 1 to 0 given the past state, then the clean
  block committed at t = 0."""
  step = video_dit.make_step(graphdef)
  f, s, ch = model.block_frames, model.input_size, model.in_channels

  def generate_block(params, state, key, cond):
    b = state['s'].shape[1]
    x = jax.random.normal(key, (b, f, s, s, ch))
    ts = jnp.linspace(1.0, 0.0, steps + 1)

    def body(i, x):
      v, _ = step(params, x, jnp.full((b,), ts[i]), state, cond)
      return x + (ts[i + 1] - ts[i]) * v

    x = jax.lax.fori_loop(0, steps, body, x)
    _, new_state = step(params, x, jnp.zeros((b,)), state, cond)
    return x, new_state

  def rollout_scan(params, state, key, cond, *, blocks: int):
    def body(state, key):
      x, state = generate_block(params, state, key, cond)
      return state, x
    return jax.lax.scan(body, state, jax.random.split(key, blocks))

  return generate_block, rollout_scan


def rollout_memory(frames=(16, 64, 256), *, steps: int = 4, batch: int = 1,
                   run: bool = True, log=print) -> dict:
  cfg = dict(ROLLOUT_MODEL)
  model = video_dit.VideoDiT(rngs=nnx.Rngs(0), **cfg)
  graphdef, params = functional.split_model(model)
  gen, scan = _rollout_fns(model, graphdef, steps=steps)
  state = model.init_state(batch)
  cond = {'label': jnp.zeros((batch,), jnp.int32)}
  key = jax.random.PRNGKey(0)
  gen_jit = jax.jit(gen)
  block_bytes = compiled_bytes(gen_jit.lower(params, state, key,
                                             cond).compile())
  state_bytes = sum(a.nbytes for a in jax.tree.leaves(state))
  f = model.block_frames
  tokens_per_frame = (cfg['input_size'] // cfg['patch'][1]) ** 2
  out = {'model': {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in cfg.items()},
         'steps_per_block': steps, 'batch': batch,
         'block_program_gib': block_bytes / GIB,
         'state_gib': state_bytes / GIB, 'by_frames': {}}
  for n in frames:
    blocks = n // f
    scan_c = jax.jit(scan, static_argnames='blocks').lower(
        params, state, key, cond, blocks=blocks).compile()
    m = scan_c.memory_analysis()
    full_model = video_dit.VideoDiT(
        rngs=nnx.Rngs(0), **dict(cfg, num_frames=n))
    fg, fp = functional.split_model(full_model)
    apply = functional.make_apply(fg)
    xs = jax.ShapeDtypeStruct((batch, n, cfg['input_size'],
                               cfg['input_size'], cfg['in_channels']),
                              jnp.float32)
    full_c = jax.jit(apply).lower(fp, xs, jnp.zeros((batch,)),
                                  cond).compile()
    row = {
        'rollout_gib': (block_bytes + state_bytes) / GIB,
        'scan_temp_gib': m.temp_size_in_bytes / GIB,
        'scan_output_gib': m.output_size_in_bytes / GIB,
        'full_sequence_gib': compiled_bytes(full_c) / GIB,
        'softmax_kv_cache_gib': (cfg['depth'] * 2 * batch * n
                                 * tokens_per_frame * cfg['width'] * 4) / GIB,
    }
    if run:
      t0 = time.perf_counter()
      st, frames_out = state, []
      for k in jax.random.split(key, blocks):
        x, st = gen_jit(params, st, k, cond)
        frames_out.append(np.asarray(x))   # Frames leave the device.
      row['wall_s'] = time.perf_counter() - t0
      row['frames_generated'] = int(sum(a.shape[1] for a in frames_out))
    out['by_frames'][str(n)] = row
    log(f'  frames={n}: ' + ', '.join(f'{k}={v:.4g}' for k, v in row.items()))
  return out


def trained_rollout(config_spec: str, model_workdir: str, out_dir: str,
                    frames=(16, 64, 256), *, n: int = 4, log=print) -> dict:
  """Rollouts of a trained block-causal video model (part 3)."""
  from visgen import builder  # pylint: disable=g-import-not-at-top
  from visgen import config_loader  # pylint: disable=g-import-not-at-top
  from visgen import media as media_lib  # pylint: disable=g-import-not-at-top
  config = config_loader.load(config_spec)
  b, state, step = builder.restore(config, model_workdir)
  params = builder.first_ema(state)
  task = b.task
  cond = task.sample_cond(n)
  guidance = float(dict(config.sampler).get('cfg_scale', 1.0))
  out = {'config': config_spec, 'checkpoint_step': int(step), 'n': n,
         'by_frames': {}}
  for f in frames:
    t0 = time.perf_counter()
    x, st = task.rollout(params, cond, jax.random.PRNGKey(f), num_frames=f,
                         guidance=guidance, return_state=True)
    wall = time.perf_counter() - t0
    jcond = {k: jnp.asarray(v) for k, v in cond.items()}
    compiled = task._rollout_block.lower(  # pylint: disable=protected-access
        params, task.zero_state(n), jax.random.PRNGKey(0), jcond,
        jnp.float32(guidance), jnp.asarray(True),
        (n, int(dict(config.sampler)['steps']))).compile()
    state_bytes = sum(a.nbytes for a in jax.tree.leaves(st))
    row = {'wall_s': wall, 'block_program_gib': compiled_bytes(compiled) / GIB,
           'state_gib': state_bytes / GIB,
           'rollout_gib': (compiled_bytes(compiled) + state_bytes) / GIB}
    # Media of the whole rollout (the task's to_media assumes its x_shape).
    labels = cond.get('label')
    media_lib.write_samples(os.path.join(out_dir, f'rollout_{f}'),
                            media_lib.Media(
                                preprocess.to_uint8(np.asarray(x)),
                                kind='video', labels=(
                                    None if labels is None
                                    else np.asarray(labels))))
    out['by_frames'][str(f)] = row
    log(f'  trained rollout frames={f}: ' + ', '.join(
        f'{k}={v:.4g}' for k, v in row.items()))
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--workdir', required=True)
  ap.add_argument('--parts', default='attention,rollout',
                  help='comma-separated: attention, rollout, trained')
  ap.add_argument('--tokens', default=','.join(map(str, TOKENS)))
  ap.add_argument('--max_run_gib', type=float, default=6.0,
                  help='compile but do not time programs above this peak')
  ap.add_argument('--frames', default='16,64,256')
  ap.add_argument('--model_config', default='configs/video_shapes.py',
                  help='part trained: the config the model was trained with')
  ap.add_argument('--model_workdir', default=None,
                  help='part trained: the trained model\'s workdir')
  args = ap.parse_args(argv)
  parts = set(args.parts.split(','))
  bad = parts - {'attention', 'rollout', 'trained'}
  if bad:
    ap.error(f'unknown parts {sorted(bad)}; valid: attention, rollout, '
             'trained')
  if 'trained' in parts and not args.model_workdir:
    ap.error('part trained needs --model_workdir (and --model_config)')
  os.makedirs(args.workdir, exist_ok=True)
  path = os.path.join(args.workdir, 'results.json')
  results = {}
  if os.path.exists(path):
    with open(path) as f:
      results = json.load(f)
  t0 = time.time()
  if 'attention' in parts:
    print('attention scaling (one block, fwd+bwd):')
    rows = attention_scaling([int(t) for t in args.tokens.split(',')],
                             max_run_gib=args.max_run_gib)
    results['attention_scaling'] = rows
    results.update(summarize(rows))
    plot(rows, os.path.join(args.workdir, 'attention_scaling.png'))
    print('\n| tokens | linear s | softmax s | linear GiB | softmax GiB |')
    print('|---:|---:|---:|---:|---:|')
    fmt = lambda v: 'n/a' if v is None else f'{v:.4g}'
    for r in rows:
      print(f"| {r['tokens']} | {fmt(r['linear_s'])} | "
            f"{fmt(r['softmax_s'])} | {fmt(r['linear_gib'])} | "
            f"{fmt(r['softmax_gib'])} |")
    print(f"\nslopes (N >= 1024): {results['slopes']}; crossover: "
          f"{results['crossover_tokens']} tokens\n")
  if 'rollout' in parts:
    print('block rollout memory (linear attention, constant state):')
    ro = rollout_memory([int(n) for n in args.frames.split(',')])
    results['rollout'] = ro
    results['memory_gib_by_frames'] = {
        k: v['rollout_gib'] for k, v in ro['by_frames'].items()}
    print('\n| frames | rollout GiB (block program + state) | scan temp GiB '
          '| full-sequence GiB | softmax KV cache GiB | wall s |')
    print('|---:|---:|---:|---:|---:|---:|')
    for n, r in ro['by_frames'].items():
      print(f"| {n} | {r['rollout_gib']:.4f} | {r['scan_temp_gib']:.4f} | "
            f"{r['full_sequence_gib']:.4f} | "
            f"{r['softmax_kv_cache_gib']:.4f} | {r.get('wall_s', 0):.1f} |")
  if 'trained' in parts:
    print('trained block rollout:')
    results['trained_rollout'] = trained_rollout(
        args.model_config, args.model_workdir, args.workdir,
        [int(n) for n in args.frames.split(',')])
  results['wall_time_s'] = time.time() - t0  # Of this invocation.
  with open(path, 'w') as f:
    json.dump(results, f, indent=1)
  print(f'wrote {path}')


if __name__ == '__main__':
  main()
