r"""Noise-aware digits classifier for classifier guidance (ADM recipe, CPU).

  python -m visgen.main --config=configs/digits_noisy_classifier.py \
      --workdir=/tmp/digits_nc

Trains p_phi(y | x_t, t) on x_t of the quickstart's path (rectified flow,
uniform t) for flattened 8x8 digits with a time-conditioned residual MLP
(visgen.classification.noisy_classifier; `:arch=conv` gives ADM's encoder
recipe in miniature, about 4x slower per step on 2 CPU cores). It must share
the path of the generator it guides: override --config.path.name with it.
`:clean` trains the same network on clean x0 (a discriminative classifier);
`:width=512,depth=4` gives the MLP of the quickstart generator's size.
"""

from visgen import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, clean=False, arch='mlp',
                             width=256, depth=3, steps=2000)
  c = config_lib.noisy_classifier(
      arg, data=dict(name='digits', size=8, batch_size=256), num_classes=10,
      x_shape=(8, 8, 1), num_grid_samples=20 if arg.runlocal else 100,
      flatten=True)
  if arg.runlocal:
    c.data.batch_size = 16
  return c
