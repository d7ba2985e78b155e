r"""Noise-aware scene classifier for classifier guidance on `shapes` (CPU).

  python -m visgen.main --config=configs/shapes_noisy_classifier.py \
      --workdir=/tmp/shapes_nc

Trains p_phi(y | x_t, t), y = the dominant shape of a 32x32 RGB `shapes`
scene (4 classes), on x_t of configs/shapes.py's path (rectified flow,
uniform t), at the generator's resolution (its runlocal variant: 8x8), with
a time-conditioned residual MLP on the flattened pixels
(visgen.classification.noisy_classifier; `:arch=conv` gives ADM's encoder
recipe in miniature, several times slower per step on 2 CPU cores). It must
share the path of the generator it guides: override --config.path.name with
it. `:clean` trains the same network on clean x0. `:ae=WORKDIR` trains it in the
latent space of that scene autoencoder (what guides the latent generator of
configs/shapes.py; experiments.guidance_tradeoff passes the generator's own
autoencoder stage).
"""

from visgen import config_lib

RES = 32  # configs/shapes.py's resolution
RES_RUNLOCAL = 8  # ... and its runlocal variant's


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, clean=False, arch='mlp',
                             width=512, depth=3, steps=2000, ae='')
  res = RES_RUNLOCAL if arg.runlocal else RES
  data = dict(name='shapes', resolution=res, batch_size=256, num_threads=2)
  if arg.runlocal:
    data = dict(name='shapes', resolution=res, num_examples=64, batch_size=8)
  # `ae=WORKDIR`: classify x_t in that scene autoencoder's latent space
  # (f=4: 8x8x4; the latent generator's space, configs/shapes.py), with the
  # autoencoder frozen and the same per-channel normalisation.
  f = 4 if not arg.runlocal else 2
  x_shape = (res // f, res // f, 4) if arg.ae else (res, res, 3)
  c = config_lib.noisy_classifier(
      arg, data=data, num_classes=4, x_shape=x_shape,
      num_grid_samples=8 if arg.runlocal else 40)
  if arg.ae:
    c.frozen = dict(autoencoder=dict(source='workdir:' + arg.ae))
    c.task.latent = dict(frozen='autoencoder', image_shape=(res, res, 3),
                         normalize='channel')
  return c
