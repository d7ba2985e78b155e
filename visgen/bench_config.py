r"""Benchmark config: a DiT flow-matching train step on synthetic images.

  python -m visgen.bench --config=visgen/bench_config.py
  python -m visgen.bench --config=visgen/bench_config.py:dtype=bfloat16
  python -m visgen.bench --config=visgen/bench_config.py:runlocal

The default is the acceptance size of issue 3: DiT depth 6, width 256, 4
heads, patch 2, 32x32x3 images, batch 64 (549.5 GFLOP per train step).
`model=unet` is the convolutional benchmark of issue 15: an ADM U-Net on
16x16x3 images, 32 channels, channel_mult (1, 2), one residual block per
level, middle attention (1 head), batch 256 (0.71 M parameters).
`res` / `batch` / `width` / `depth` override either (0: the model's
default). With `--peer=torch` the benchmark also runs the PyTorch twin
(benchmarks/torch_peer.py).
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
      arg, dtype='float32', model='dit', depth=0, width=0, heads=4, patch=0,
      res=0, batch=0, attn='xla', attn_fp32=False, remat=False,
      runlocal=False)
  if arg.model not in ('dit', 'unet'):
    raise ValueError(f'bench_config model={arg.model!r}: valid choices are '
                     'dit, unet.')
  unet = arg.model == 'unet'
  arg.res = arg.res or (16 if unet else 32)
  arg.batch = arg.batch or (256 if unet else 64)
  arg.width = arg.width or (32 if unet else 256)
  arg.depth = arg.depth or (1 if unet else 6)
  arg.patch = arg.patch or (1 if unet else 2)
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
  if unet:
    c.model = dict(name='unet', input_size=arg.res, in_channels=3,
                   patch=arg.patch, model_channels=arg.width,
                   channel_mult=(1, 2), num_res_blocks=arg.depth,
                   attention_resolutions=(), mid_attention=True,
                   num_heads=1, dropout=0.0, num_classes=10, dtype=arg.dtype,
                   attn_fp32=arg.attn_fp32, remat=arg.remat)
  c.path = dict(name='linear')
  c.prediction = 'velocity'
  c.weighting = dict(name='uniform')
  c.time_dist = dict(name='uniform')
  c.optim = config_lib.optim(lr=1e-4, grad_clip=1.0)
  c.sampler = dict(name='euler', steps=50, cfg_scale=0.0)
  c.bench = bench_defaults()
  if arg.runlocal:
    c.data.batch_size = 8
    if unet:
      c.model.update(input_size=8, patch=1, model_channels=8)
    else:
      c.model.update(input_size=8, patch=2, width=32, depth=1, heads=2)
    c.task.x_shape = (8, 8, 3)
    c.sampler.steps = 2
    c.bench.update(warmup_steps=1, steps=1, peak_n=256, peak_repeats=2)
  return c
