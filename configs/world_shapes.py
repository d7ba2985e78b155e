r"""Action-conditioned world model on `shapes_world`, sized for 2 CPU cores.

  python -m visgen.main --config=configs/world_shapes.py --workdir=/tmp/world
  python -m visgen.world --workdir=/tmp/world --actions=d,d,s,s,a,a,w,w \
      --frames=8 --out=/tmp/world.gif               # a rollout as a GIF
  python -m visgen.world --workdir=/tmp/world --eval \
      --results=experiments/results/world            # action error, drift
  python -m visgen.world --workdir=/tmp/world --serve --port=8000

A camera over a procedural map (`visgen/data/shapes_world.py`) moves by
actions (noop, up, down, left, right; a quarter of the view per step).
Clips of 8 frames of 16x16 with the 7 actions between them (random, each
repeating the previous with probability 0.5) train the block-causal
linear-attention video DiT (`visgen/models/video_dit.py`) as a world model
(`visgen/tasks/world_model.py`): blocks of 1 frame, each with its own noise
level (diffusion forcing), each frame conditioned on the action taken
before it (an embedding added to its adaLN conditioning, dropped to the
null action with probability 0.1 for classifier-free guidance) and on the
previous block's last frame (concatenated channels). Patches (1, 4, 4): a
step of 4 pixels is one token. Rectified flow, velocity prediction,
logit-normal times, Heun sampling block by block with classifier-free
guidance on the actions at scale 8: at 1-1.5 this small, briefly trained
model barely follows its actions (`--cfg_sweep` of `python -m visgen.world
--eval`; the README's world-model section has the trade-off).
Trained for 2800 steps of batch 8 (about 10 minutes on 2 CPU cores).

Self-forcing (`:sf=1[,sf_examples=4,sf_steps=2]`, usually as a fine-tune
`:init=DIR,steps=N,sf=1`): the first sf_examples clips of every batch are
also rolled out by the model itself from their real first frame under
their real actions (sf_steps Heun steps per block with CFG, parameters
stopped), and the loss on one random block given that generated history
against the real frame is added with weight sf
(`WorldModelTask.self_forced_loss`).

`:runlocal` is a tiny 8x8 variant for tests (a few steps).
"""

from visgen import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, steps=2800, batch=8,
                             res=16, frames=8, block=1, width=64, depth=4,
                             heads=2, lr=2e-3, persistence=0.5,
                             prev_frame=True, sampler_steps=8,
                             cfg_scale=8.0, sf=0.0, sf_examples=4,
                             sf_steps=2, init='')
  c = config_lib.base_config()
  c.seed = 0
  c.total_steps = arg.steps
  c.log_every = 100
  c.ckpt_every = 1000
  c.ema_decays = (0.999,)
  c.ema_warmup = True

  c.data = dict(name='shapes_world', resolution=arg.res,
                num_frames=arg.frames, persistence=arg.persistence,
                batch_size=arg.batch, num_threads=2)
  c.task = dict(name='world_model', x_shape=(arg.frames, arg.res, arg.res,
                                             3),
                block_frames=arg.block, num_actions=5, action_dropout=0.1,
                prev_frame=arg.prev_frame)
  if arg.sf > 0:  # Self-forcing: also train on the model's own rollouts.
    c.task.self_forcing = dict(weight=arg.sf, examples=arg.sf_examples,
                               steps=arg.sf_steps)
  if arg.init:  # Fine-tune a trained world model (e.g. with sf > 0).
    c.init_from = dict(source='workdir:' + arg.init, weights='ema')
  c.model = dict(name='video_dit', num_frames=arg.frames,
                 input_size=arg.res, in_channels=3, patch=(1, 4, 4),
                 width=arg.width, depth=arg.depth, heads=arg.heads,
                 mlp_ratio=2.5, attention='linear', ffn='mix',
                 num_actions=5, prev_frame=arg.prev_frame,
                 block_frames=arg.block)
  c.path = dict(name='linear')
  c.prediction = 'velocity'
  c.weighting = dict(name='uniform')
  c.time_dist = dict(name='logit_normal', mean=0.0, std=1.0)
  c.optim = config_lib.optim(lr=arg.lr, warmup_steps=100, schedule='cosine',
                             grad_clip=1.0)
  c.sampler = dict(name='heun', steps=arg.sampler_steps,
                   cfg_scale=arg.cfg_scale)
  c.num_grid_samples = 8
  c.num_samples = 8
  c.sample_batch = 8
  c.eval = {}

  if arg.runlocal:
    c.total_steps = 3
    c.log_every = 1
    c.ckpt_every = 3
    c.data = dict(name='shapes_world', resolution=8, num_frames=4,
                  persistence=arg.persistence, num_examples=32,
                  batch_size=8)
    c.task.x_shape = (4, 8, 8, 3)
    c.model.update(num_frames=4, input_size=8, width=16, depth=1, heads=1)
    c.sampler.steps = 2
    c.num_grid_samples = 2
    c.num_samples = 2
    c.sample_batch = 2
  return c
