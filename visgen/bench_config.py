r"""Benchmark config: a DiT flow-matching train step on synthetic images.

  python -m visgen.bench --config=visgen/bench_config.py
  python -m visgen.bench --config=visgen/bench_config.py:dtype=bfloat16
  python -m visgen.bench --config=visgen/bench_config.py:runlocal

The default is the acceptance size of issue 3: DiT depth 6, width 256, 4
heads, patch 2, 32x32x3 images, batch 64 (549.5 GFLOP per train step).
Any training config works too (`--config=configs/X.py`); the benchmark only
reads `model`, `task`, `path`, `prediction`, `weighting`, `time_dist`,
`optim`, `ema_decays`, `sampler`, `data.batch_size` and `bench` (defaults
below when absent).
"""

from visgen import config_lib


def bench_defaults() -> dict:
  """Timing knobs: a full-size step takes seconds on 2 cores, so few steps."""
  return dict(warmup_steps=2, steps=3, sample_batch=0, sample_steps=10,
              sample_repeats=1, peak_n=2048, peak_repeats=5)


def get_config(arg=None):
  arg = config_lib.parse_arg(
      arg, dtype='float32', depth=6, width=256, heads=4, patch=2, res=32,
      batch=64, attn='xla', attn_fp32=False, remat=False,
      runlocal=False)
  c = config_lib.base_config()
  c.total_steps = 1000
  c.ema_decays = (0.9999,)
  c.data = dict(name='synthetic', size=arg.res, batch_size=arg.batch)
  c.task = dict(name='generation', num_classes=10, label_dropout=0.1,
                x_shape=(arg.res, arg.res, 3))
  c.model = dict(name='dit', input_size=arg.res, in_channels=3,
                 patch=arg.patch, width=arg.width, depth=arg.depth,
                 heads=arg.heads, num_classes=10, dtype=arg.dtype,
                 attn_impl=arg.attn, attn_fp32=arg.attn_fp32,
                 remat=arg.remat)
  c.path = dict(name='linear')
  c.prediction = 'velocity'
  c.weighting = dict(name='uniform')
  c.time_dist = dict(name='uniform')
  c.optim = config_lib.optim(lr=1e-4, grad_clip=1.0)
  c.sampler = dict(name='euler', steps=50, cfg_scale=0.0)
  c.bench = bench_defaults()
  if arg.runlocal:
    c.data.batch_size = 8
    c.model.update(input_size=8, patch=2, width=32, depth=1, heads=2)
    c.task.x_shape = (8, 8, 3)
    c.sampler.steps = 2
    c.bench.update(warmup_steps=1, steps=1, peak_n=256, peak_repeats=2)
  return c
