r"""Class-conditional scenes with classifier-free guidance: configs/shapes.py.

  python -m visgen.main --config=configs/shapes_cfg.py --workdir=/tmp/scfg

Kept as the name the guidance experiment's first scene rows used; it is now
exactly configs/shapes.py (the same `:args`), the one scene-world generator
recipe: 32x32 RGB `shapes` scenes, y = the shape of the largest visible
object (4 classes), null class (label dropout 0.1) for classifier-free
guidance, latent diffusion on its own autoencoder stage. (The earlier 16x16 residual
MLP learned colour blobs only: shapes-FID ~290, class accuracy at chance.)
The guidance experiment (`python -m experiments.guidance_tradeoff
--dataset=shapes`) pairs it with configs/shapes_noisy_classifier.py.
"""

import importlib.util
import os


def get_config(arg=None):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'shapes.py')
  spec = importlib.util.spec_from_file_location('visgen_configs_shapes', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
