r"""InstructPix2Pix on `shapes_edit` pairs (recolour / move / resize).

  python -m visgen.main --config=configs/ip2p_shapes.py --workdir=/tmp/ip2p
  # the paper's plain recipe (velocity prediction, no source skip, the
  # instruction only through the pooled embedding, Heun):
  python -m visgen.main --config=configs/ip2p_shapes.py:prediction=velocity,\
skip=False,xattn=False,t_mean=0,sampler=heun --workdir=/tmp/ip2p_plain
  # warm-started from a pixel-space U-Net generator (configs/shapes.py:
  # latent=False; new input channels and attention at zero):
  python -m visgen.main --config=configs/ip2p_shapes.py:base=/tmp/shapes \
      --workdir=/tmp/ip2p

The denoiser (visgen/models/instruct.py) is a U-Net reading the source
scene by channel concatenation (zero-initialised extra input channels) and
the tokenised instruction (scene_words) twice: a small order-aware
embedding added to its time embedding, and (`xattn`, SD's route in the
paper) a one-layer scene_text encoder that the 8x8 and 4x4 attention blocks
cross-attend to. Dropout of image only / text only / both: 5% each (the
paper's). Sampling: the dual guidance, s_T = `cfg_scale` (7.5 in the paper;
3 here) and s_I = `config.task.image_cfg_scale` (1.5).

Defaults = the measured recipe at 16x16 (README, "Control, instruction
editing and diffusion bridges"; 32000 steps x batch 16, 1.38M parameters,
about 2 h on 2 cores; experiments/ip2p_ablation.py, variant i):
* x0 prediction trained on the velocity error (as configs/shapes.py) with
  `skip`: the network's x0 is the source plus the U-Net's output, so an
  edit is learned as a change and copying is the identity;
* `t_mean=1.5`: logit-normal times shifted towards noise (median t = 0.82).
  Each pair's edit is a function of source and instruction, so only at
  high noise does the instruction decide anything (below it the noisy
  target shows the edit); with the unshifted times the model ignored the
  instruction (one-step x0 error inside the edit mask at t = 0.99: 0.60
  with and 0.62 without it, after 2000 steps);
* `edit_weight=5`: the squared error on the edit mask counts 5 times (from
  the start; added after 6000 steps it moved the one-step error inside the
  mask from 0.30 to 0.13 in 4000 steps);
* patch 1 (at 16x16 a patch-2 U-Net draws the scene in 2x2 blocks);
* Euler, 4 steps: few steps beat 16 on these models.
"""

from visgen import config_lib
from visgen.models import instruct
from visgen.tasks import image_cond

RES = 16
MAX_LEN = 10


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, res=RES,
                             base='', steps=32000,
                             batch=16, lr=1e-3, width=32, sampler_steps=4,
                             cfg_scale=3.0, image_cfg_scale=1.5,
                             patch=1, prediction='x0',
                             sampler='euler', skip=True,
                             xattn=True, t_mean=1.5,
                             loss_space='velocity', edit_weight=5.0)
  c = config_lib.base_config()
  res = 8 if arg.runlocal else arg.res
  c.total_steps = arg.steps
  c.log_every = 100
  c.ckpt_every = 500
  c.ema_decays = (0.999,)
  c.ema_warmup = True
  tok = dict(name='scene_words', max_len=MAX_LEN, keys=('instruction',))
  c.data = dict(name='shapes_edit', resolution=res, batch_size=arg.batch,
                num_threads=2, tokenizer=tok)
  unet = dict(name='unet', input_size=res, in_channels=3, patch=arg.patch,
              model_channels=arg.width, channel_mult=(1, 2, 2),
              num_res_blocks=1, attention_resolutions=(), mid_attention=True,
              num_heads=1, dropout=0.0, num_classes=0, dtype='float32')
  if arg.xattn:
    # Cross-attention to the encoded instruction at 8x8 and 4x4 features.
    side = res // arg.patch
    unet.update(attention_resolutions=(side // 2, side // 4), num_heads=2,
                text_encoder=dict(name='scene_text', width=32, depth=1,
                                  heads=2, max_len=MAX_LEN))
  if arg.runlocal:
    unet.update(model_channels=8, channel_mult=(1, 2), mid_attention=False)
  c.task = dict(name='instruct_edit', x_shape=(res, res, 3),
                image_dropout=0.05, text_dropout=0.05, both_dropout=0.05,
                image_cfg_scale=arg.image_cfg_scale)
  if arg.edit_weight != 1:
    c.task.edit_weight = arg.edit_weight
  c.model = dict(name='instruct_unet', unet=dict(unet, concat_channels=3),
                 max_len=MAX_LEN, text_dim=16)
  if arg.skip:
    c.model.source_skip = True
  if arg.base:
    # The base's class table is not copied (the edit model has no labels).
    base = dict(unet, num_classes=4)
    source = image_cond.base_source(base, arg.base, what='ip2p_shapes')
    c.init_from = dict(source=source, weights='ema',
                       mapping=(instruct.XATTN_INIT_MAPPING if arg.xattn
                                else instruct.INIT_MAPPING))
  c.path = dict(name='linear')
  c.prediction = arg.prediction
  # x0 prediction is trained on the velocity error (JiT), as configs/shapes.py.
  c.weighting = (dict(name='uniform', space=arg.loss_space)
                 if arg.prediction == 'x0' else dict(name='uniform'))
  c.time_dist = dict(name='logit_normal', mean=arg.t_mean, std=1.0)
  c.optim = config_lib.optim(lr=arg.lr, warmup_steps=50, schedule='cosine',
                             grad_clip=1.0)
  c.sampler = dict(name=arg.sampler, steps=arg.sampler_steps,
                   cfg_scale=arg.cfg_scale)
  c.num_grid_samples = 16
  c.eval = {}
  if arg.runlocal:
    c.total_steps = 4
    c.log_every = 2
    c.ckpt_every = 2
    c.data = dict(name='shapes_edit', resolution=8, num_examples=64,
                  batch_size=8, tokenizer=tok)
    c.sampler.steps = 2
    c.num_grid_samples = 4
  return c
