r"""DiT (Peebles & Xie, 2023) on ImageNet 256x256 in the SD-VAE latent space.

  python -m visgen.main --config=configs/dit_imagenet.py:variant=XL/2 \
      --workdir=$W
  python -m visgen.main --config=configs/dit_imagenet.py:runlocal --workdir=$W

The paper's recipe: latents 32x32x4 (SD-VAE, scale 0.18215), DiT-XL/2
(width 1152, depth 28, 16 heads, patch 2), class-conditional with 10% label
dropout, batch 256, AdamW lr 1e-4 with no weight decay and no warmup,
EMA 0.9999, eps prediction on the linear-beta DDPM schedule (1000 steps),
CFG 1.5 at sampling. The paper's learned variance (L_vlb) is not trained by
the unified loss, so sampling uses the ODE / DDIM instead of 250-step DDPM.

Needs (1) ImageNet prepared for TFDS (`imagenet256`) and (2) SD's
autoencoder converted once from its diffusers directory
(stabilityai/sd-vae-ft-ema, `config.json` + `diffusion_pytorch_model.
safetensors`) into visgen's format:

  python -m visgen.convert --from=diffusers --src=SD_VAE_DIR \
      --out=~/.cache/visgen/autoencoders/sd-vae-ft-ema [--verify]

(`vae=DIR` names another converted directory). It is a frozen component
(`config.frozen.autoencoder`) that encodes each batch inside the step
(`config.task.latent`, scale 0.18215 read from the converted
latent_stats.json); a missing input fails before anything is built, with
one message naming both. `runlocal` trains a tiny DiT on 64 procedural 8x8
scenes (4 classes) through a tiny AutoencoderKL converted from diffusers'
format (tests/fixtures/convert/vae -> vae_visgen, random weights: it
checks the pipeline, not image quality).
"""

import os

from visgen import config_lib

# SD's autoencoder (sd-vae-ft-ema), converted by visgen.convert, lives in
# $VISGEN_CACHE/autoencoders/sd-vae-ft-ema (read when the config is built).
VAE = ('autoencoders', 'sd-vae-ft-ema')
# The architecture of sd-vae-ft-ema (its diffusers config.json: block_out_
# channels 128, 256, 512, 512; 2 layers per block; 4 latent channels).
SD_VAE = dict(name='autoencoder_kl', input_size=256, in_channels=3, ch=128,
              ch_mult=(1, 2, 4, 4), num_res_blocks=2, z_channels=4,
              double_z=True, norm_groups=32, mid_attention=True,
              use_quant_conv=True, dtype='float32')
# runlocal's: a tiny AutoencoderKL converted from diffusers' format.
RUNLOCAL_VAE = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..',
                            'tests', 'fixtures', 'convert', 'vae_visgen')

VARIANTS = ('S/2', 'S/4', 'S/8', 'B/2', 'B/4', 'B/8', 'L/2', 'L/4', 'L/8',
            'XL/2', 'XL/4', 'XL/8')


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, variant='XL/2', runlocal=False, vae='')
  if arg.variant not in VARIANTS:
    raise ValueError(f'Unknown DiT variant {arg.variant!r}. Valid choices: '
                     f'{", ".join(VARIANTS)}.')
  size, patch = arg.variant.split('/')
  c = config_lib.base_config()
  c.total_steps = 400_000
  c.ckpt_every = 10_000
  c.keep_every = 50_000
  c.ema_decays = (0.9999,)
  c.data = config_lib.tfds_data('imagenet256', batch_size=256, flip=True)
  default_vae = config_lib.visgen_cache(*VAE)
  vae = arg.vae or (RUNLOCAL_VAE if arg.runlocal else default_vae)
  c.frozen = dict(autoencoder=dict(
      source='safetensors:' + os.path.join(vae, 'model.safetensors'),
      hint='convert stabilityai/sd-vae-ft-ema: python -m visgen.convert '
      f'--from=diffusers --src=SD_VAE_DIR --out={vae}'))
  if vae == default_vae:  # its architecture, known before the file exists
    c.frozen.autoencoder.model = SD_VAE
  c.task = dict(name='generation', num_classes=1000, label_dropout=0.1,
                x_shape=(32, 32, 4),
                latent=dict(frozen='autoencoder', image_shape=(256, 256, 3),
                            normalize='scale'))
  c.model = dict(name='dit', input_size=32, in_channels=4, patch=int(patch),
                 variant=size, num_classes=1000, dtype='float32')
  c.path = dict(name='ddpm_linear')
  c.prediction = 'eps'
  c.weighting = dict(name='uniform')
  c.time_dist = dict(name='uniform')
  c.optim = config_lib.optim(lr=1e-4, weight_decay=0.0, grad_clip=0.0)
  c.sampler = dict(name='ddim', steps=250, cfg_scale=1.5,
                   cfg_rescale=0.0, cfg_interval=(0.0, 1.0), cfg_channels=0)
  c.sharding = config_lib.mesh_and_sharding('dp')
  c.eval = dict(features=dict(feature_net='inception',
                              reference='imagenet256:validation',
                              num_samples=50_000, batch=250))
  if arg.runlocal:
    config_lib.runlocal_data(c, replaces='imagenet256')
    c.task.update(num_classes=4, x_shape=(4, 4, 4))
    c.task.latent.image_shape = (8, 8, 3)
    c.model.update(input_size=4, in_channels=4, patch=2, variant=None,
                   width=32, depth=1, heads=2, num_classes=4)
    config_lib.runlocal_common(c)
  return c
