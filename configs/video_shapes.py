r"""Video generation on the scene world (or moving digits) on 2 CPU cores.

  python -m visgen.main --config=configs/video_shapes.py --workdir=/tmp/vid
  python -m visgen.main --config=configs/video_shapes.py:first_frame=True \
      --workdir=/tmp/i2v                         # image-to-video
  python -m visgen.main --config=configs/video_shapes.py:dataset=moving_digits\
      --workdir=/tmp/md
  python -m visgen.main --config=configs/video_shapes.py --workdir=/tmp/vid \
      --mode=sample                              # samples_*.gif and .npz

Class-conditional (and, with first_frame=True, image-to-video) generation of
8-frame 16x16 clips of `shapes_video` (bouncing shapes; 4 classes: the shape
of the largest object) or `moving_digits` (grey, 10 classes: the first
digit), with the video DiT (`visgen/models/video_dit.py`): SANA-style linear
attention (ReLU kernel), Mix-FFN and 3-D RoPE over (T/2) x (H/4) x (W/4)
tokens (`attention=softmax` for the softmax baseline of the same family).
With linear attention the model is block-causal over blocks of `block` = 2
frames and trained with one noise level per block (diffusion forcing), so
besides ordinary sampling it rolls out videos of any length block by block
with a constant-size state (`VideoTask.rollout`; `python -m
experiments.attention_scaling --parts=rollout --model_workdir=DIR`).
Rectified flow with velocity prediction, logit-normal times, Heun sampling
with classifier-free guidance on the label.

Measured (2026-12-07, defaults: 2400 steps of batch 16, 1.29M parameters):
3763 s of training on 2 cores shared with other jobs (about half that on
idle cores); `python -m experiments.video` gives FVD 41.3 (floor 7.1),
frame shapes-FID 116 (floor 12.6) and a physics error of 6.7 px after 2
given frames (static baseline 3.5): the samples are coloured blobs, not yet
shapes (README, "Video and world model, measured together").
"""

from visgen import config_lib

DATASETS = {'shapes_video': (3, 4), 'moving_digits': (1, 10)}


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, dataset='shapes_video',
                             attention='linear', first_frame=False,
                             steps=2400, batch=16, res=16, frames=8,
                             block=2, width=128, depth=4, heads=4, lr=1e-3,
                             sampler_steps=16, cfg_scale=2.0)
  if arg.dataset not in DATASETS:
    raise ValueError(f'Unknown dataset {arg.dataset!r}. Valid choices: '
                     f'{", ".join(DATASETS)}.')
  channels, classes = DATASETS[arg.dataset]
  # Block-causal with one t per block (diffusion forcing) for linear
  # attention, so the model can also roll out block by block; block=0:
  # bidirectional attention over all frames.
  block = arg.block if arg.attention == 'linear' and arg.block else None
  c = config_lib.base_config()
  c.seed = 0
  c.total_steps = arg.steps
  c.log_every = 100
  c.ckpt_every = 1000
  c.ema_decays = (0.999,)
  c.ema_warmup = True

  c.data = dict(name=arg.dataset, resolution=arg.res,
                num_frames=arg.frames, batch_size=arg.batch, num_threads=2)
  c.task = dict(name='video', x_shape=(arg.frames, arg.res, arg.res,
                                       channels),
                num_classes=classes, label_dropout=0.1,
                first_frame=arg.first_frame, frame_dropout=0.1,
                block_frames=block)
  c.model = dict(name='video_dit', num_frames=arg.frames,
                 input_size=arg.res, in_channels=channels, patch=(2, 4, 4),
                 width=arg.width, depth=arg.depth, heads=arg.heads,
                 mlp_ratio=2.5, attention=arg.attention,
                 ffn='mix' if arg.attention == 'linear' else 'mlp',
                 num_classes=classes, first_frame=arg.first_frame,
                 block_frames=block)
  c.path = dict(name='linear')
  c.prediction = 'velocity'
  c.weighting = dict(name='uniform')
  c.time_dist = dict(name='logit_normal', mean=0.0, std=1.0)
  c.optim = config_lib.optim(lr=arg.lr, warmup_steps=100, schedule='cosine',
                             grad_clip=1.0)
  c.sampler = dict(name='heun', steps=arg.sampler_steps,
                   cfg_scale=arg.cfg_scale, cfg_rescale=0.0,
                   cfg_interval=(0.0, 1.0), cfg_channels=0)
  c.num_grid_samples = 16
  c.num_samples = 16
  c.sample_batch = 16
  c.eval = {}

  if arg.runlocal:
    c.total_steps = 4
    c.log_every = 2
    c.ckpt_every = 2
    c.data = dict(name=arg.dataset, resolution=8, num_frames=4,
                  num_examples=32, batch_size=8)
    if arg.dataset == 'moving_digits':
      c.data['digit_size'] = 4
    c.task.x_shape = (4, 8, 8, channels)
    c.model.update(num_frames=4, input_size=8, width=24, depth=1, heads=2)
    c.sampler.steps = 2
    c.num_grid_samples = 4
    c.num_samples = 4
    c.sample_batch = 4
  return c
