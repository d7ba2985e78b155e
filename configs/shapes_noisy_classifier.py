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
it. `:clean` trains the same network on clean x0.
"""

from visgen import config_lib

RES = 32  # configs/shapes.py's resolution
RES_RUNLOCAL = 8  # ... and its runlocal variant's


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, clean=False, arch='mlp',
                             width=512, depth=3, steps=2000)
  res = RES_RUNLOCAL if arg.runlocal else RES
  data = dict(name='shapes', resolution=res, batch_size=256, num_threads=2)
  if arg.runlocal:
    data = dict(name='shapes', resolution=res, num_examples=64, batch_size=8)
  return config_lib.noisy_classifier(
      arg, data=data, num_classes=4, x_shape=(res, res, 3),
      num_grid_samples=8 if arg.runlocal else 40)
