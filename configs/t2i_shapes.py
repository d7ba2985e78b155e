r"""Text-to-image on `shapes` captions, in latent space, on 2 CPU cores.

  python -m visgen.main --config=configs/t2i_shapes.py --workdir=/tmp/t2i
  python -m visgen.main --config=configs/t2i_shapes.py:ae=/tmp/shapes/stages/autoencoder ...
  python -m visgen.main --config=configs/t2i_shapes.py:latent=False ...   # pixels
  python -m visgen.generate --workdir=/tmp/t2i \
      --prompt="a small red circle left of a large blue square" --out=/tmp/g.png

Learns p(x | caption) for 32x32 scenes of the procedural world
(visgen/data/shapes.py), the captions from its grammar ("a large green
triangle above a small yellow diamond on a gray background"), tokenised on
the host by the `scene_words` tokenizer (the grammar's closed vocabulary:
an unknown word is an error, never a silent <unk>). Four (colour, shape)
pairs (`HELDOUT`) never occur in the training scenes.

The recipe is configs/shapes.py's latent diffusion (`config_lib.
scene_latents`), in one command:
* Stage 1: the scene autoencoder (configs/autoencoder_shapes.py, f=4,
  8x8x4 latents, batch 16 x 1600 steps) into WORKDIR/stages/autoencoder
  (`ae=WORKDIR` reuses a trained one instead; `f=2` trains an f=2 one,
  16x16x4 latents read by the U-Net as 2x2 patches: measured worse, see
  the README).
* Stage 2: the first 50,000 train scenes (held-out pairs filtered out)
  encoded once into WORKDIR/stages/latents, each latent stored with its
  caption (the encoding stage's `fields`).
* The generator: the latent ADM U-Net of configs/shapes.py (width 64,
  channel_mult (1, 2)) with LDM's text conditioning: a trainable
  `scene_text` encoder (3 layers, width 128, 4 heads) read by cross-
  attention in the 8x8 attention blocks and the 4x4 middle block, plus its
  pooled vector added to the time embedding. Captions are dropped
  (p = 0.1) to a learned null text (PixArt-alpha's `y_embedding`) for
  classifier-free guidance on text; `task.negative_prompt` or
  `visgen.generate --negative` replaces the null by a negative prompt.
  Rectified flow, x0 prediction on the velocity loss, logit-normal times,
  batch 32 x LATENT_STEPS; Euler 40 steps, CFG 3.

Evaluations (metrics.json): shapes-FID (+ floor) of caption-conditioned
samples for test captions, and GenEval-style prompt accuracy
(`visgen/evaluators/scene_parser.py`: a per-pixel shape network trained on
the scene world's masks + deterministic grouping reads each sample back
into objects; shape, colour, size, count, position, overall), beside the
parser's accuracy on real test scenes (the ceiling), on captions with a
held-out pair, unguided (scale 1) and over CFG scales 0 (the
unconditional model: null caption), 1, 2, 3, 5.
`python -m experiments.t2i_report` tabulates and plots them.

Measured: see the README's text-to-image section (the run of record and
the probes, experiments/results/t2i_shapes/).

`latent=False` keeps the earlier pixel-space recipe (patch-2 U-Net, width
32, 3200 steps, Euler 12; 27 min 25 s: shapes-FID 76.5, prompt accuracy
0.045, blobs without geometry).
"""

from visgen import config_lib

RES = 32
LATENT_STEPS = 6000
PIXEL_STEPS = 3200
# (colour, shape) pairs that never occur in training: test captions that
# combine one of them measure compositional generalisation.
HELDOUT = (('red', 'triangle'), ('blue', 'circle'), ('yellow', 'square'),
           ('green', 'diamond'))


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, latent=True, ae='',
                             ae_steps=1600, ae_batch=16, z=4, f=4, cache=50000,
                             steps=0, batch=0, width=0, mult='', lr=1e-3,
                             text_width=0, text_depth=0, text_heads=0,
                             sampler_steps=0, pos=True, t_mean=0.0,
                             cfg_scale=3.0)
  latent = arg.latent or bool(arg.ae)
  c = config_lib.base_config()
  c.seed = 0
  c.total_steps = arg.steps or (LATENT_STEPS if latent else PIXEL_STEPS)
  c.log_every = 100
  c.ckpt_every = 1000
  c.ema_decays = (0.999,)
  c.ema_warmup = True

  max_len = 24
  batch = arg.batch or (32 if latent else 64)
  c.data = dict(name='shapes', resolution=RES, batch_size=batch,
                num_threads=2,
                tokenizer=dict(name='scene_words', max_len=max_len,
                               keys=('caption',)),
                heldout=HELDOUT)
  c.task = dict(name='text_to_image', x_shape=(RES, RES, 3),
                caption_dropout=0.1, null='learned', negative_prompt='')
  width = arg.width or (64 if latent else 32)
  mult = tuple(int(m) for m in (arg.mult or ('12' if latent else '122')))
  c.model = dict(name='unet', input_size=RES, in_channels=3, patch=2,
                 model_channels=width, channel_mult=mult,
                 num_res_blocks=1, attention_resolutions=(8,),
                 mid_attention=True, num_heads=1, dropout=0.0,
                 pooled_dim=1,
                 text_encoder=dict(
                     name='scene_text',
                     width=arg.text_width or (128 if latent else 64),
                     depth=arg.text_depth or (3 if latent else 2),
                     heads=arg.text_heads or (4 if latent else 2),
                     max_len=max_len))
  if latent:
    # configs/shapes.py's latent recipe; the encoding stage keeps each
    # scene's caption beside its latent (tokenised on the host as before).
    config_lib.scene_latents(c, ae=arg.ae, ae_steps=arg.ae_steps,
                             ae_batch=arg.ae_batch, z=arg.z, f=arg.f,
                             cache=arg.cache,
                             batch=batch, runlocal=arg.runlocal, res=RES,
                             fields=('label', 'caption'))
    if arg.cache and not arg.runlocal:
      # The held-out (colour, shape) pairs are filtered out of the scenes
      # before encoding (`heldout` of the shapes source).
      c.stages['latents']['source_options'] = dict(heldout=HELDOUT)
    # The U-Net works on an 8x8 grid whatever f: f=2 latents (16x16) are
    # read as 2x2 patches.
    c.model.update(input_size=c.task.x_shape[0], in_channels=arg.z,
                   patch=max(1, c.task.x_shape[0] // 8), pos_embed=arg.pos)
  c.path = dict(name='linear')
  c.prediction = 'x0'
  c.weighting = dict(name='uniform', space='velocity')
  # Logit-normal times (SD3). `t_mean=0.5` (more training at high noise,
  # where layout is decided) was measured worse: prompt accuracy 0.315
  # against 0.415 (README).
  c.time_dist = dict(name='logit_normal', mean=arg.t_mean, std=1.0)
  c.optim = config_lib.optim(lr=arg.lr, warmup_steps=100, schedule='cosine',
                             grad_clip=1.0)
  c.sampler = dict(name='euler',
                   steps=arg.sampler_steps or (40 if latent else 12),
                   cfg_scale=arg.cfg_scale)
  c.num_grid_samples = 40
  c.sample_batch = 250
  c.eval = dict(features=dict(feature_net='shapes', reference='shapes:test',
                              num_samples=1000, batch=250),
                prompt_accuracy=dict(num_prompts=200, batch=100,
                                     scales=(0.0, 1.0, 2.0, 3.0, 5.0)))

  if arg.runlocal:
    c.total_steps = 4
    c.log_every = 2
    c.ckpt_every = 2
    text = dict(name='scene_text', width=16, depth=1, heads=2,
                max_len=max_len)
    if latent:
      c.model.update(model_channels=8, channel_mult=(1,),
                     attention_resolutions=(4,), mid_attention=False,
                     text_encoder=text)
    else:
      c.data.update(resolution=8, num_examples=64, batch_size=8)
      c.task.x_shape = (8, 8, 3)
      c.model.update(input_size=8, model_channels=8, channel_mult=(1, 2),
                     attention_resolutions=(), mid_attention=True,
                     text_encoder=text)
    c.sampler.steps = 2
    c.num_grid_samples = 8
    c.eval = {}
  return c
