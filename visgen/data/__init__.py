"""Data: a registry of random-access sources, and grain pipelines.

`get_source(name, split=..., **kwargs)` returns an object with `len` and
`[index]` -> dict of numpy arrays: 'image' uint8 HWC always, 'label' int32
where defined, other keys per dataset (see each module). Feed it to
`pipeline.make_iterator`. Names:

  digits         sklearn digits 8x8 (size=16 resizes)          digits.py
  skimage_crops  crops of scikit-image photographs              skimage_crops.py
  shapes         procedural scenes with full ground truth       shapes.py
  shapes_edit    (scene, instruction, edited scene) pairs       shapes_edit.py
  shapes_video   moving, bouncing shapes                        shapes_motion.py
  moving_digits  moving digits sequences                        shapes_motion.py
  shapes_world   camera over a procedural map, driven by actions shapes_world.py
  cifar10, imagenet64, imagenet256, celeba_hq, lsun_bedroom, lsun_church:
                 TFDS array_record datasets (need preparation)  tfds_sources.py
"""

import numpy as np

from visgen.registry import Registry

SOURCES = Registry('dataset')


class ArraySource:
  """Random-access source over a dict of equal-length numpy arrays."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    self.arrays = arrays
    self._n = len(next(iter(arrays.values())))

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {k: v[int(index)] for k, v in self.arrays.items()}


@SOURCES.register('digits')
def _digits(*, split, size=8):
  from visgen.data import digits  # pylint: disable=g-import-not-at-top

  return ArraySource(digits.load_digits_split(split, size=size))


def _lazy(module, cls):
  def build(*, split, **kwargs):
    import importlib  # pylint: disable=g-import-not-at-top

    mod = importlib.import_module(f'visgen.data.{module}')
    return getattr(mod, cls)(split=split, **kwargs)

  return build


for _name, _module, _cls in (
    ('skimage_crops', 'skimage_crops', 'SkimageCropsSource'),
    ('shapes', 'shapes', 'ShapesSource'),
    ('shapes_edit', 'shapes_edit', 'ShapesEditSource'),
    ('shapes_video', 'shapes_motion', 'ShapesVideoSource'),
    ('moving_digits', 'shapes_motion', 'MovingDigitsSource'),
    ('shapes_world', 'shapes_world', 'ShapesWorldSource'),
    ('latents', 'latents', 'LatentSource'),
):
  SOURCES.register(_name)(_lazy(_module, _cls))


def _tfds(name):
  def build(*, split, data_dir=None, image_size=None):
    from visgen.data import tfds_sources  # pylint: disable=g-import-not-at-top

    return tfds_sources.TfdsSource(name, split=split, data_dir=data_dir,
                                   image_size=image_size)

  return build


for _name in ('cifar10', 'imagenet64', 'imagenet256', 'celeba_hq',
              'lsun_bedroom', 'lsun_church'):
  SOURCES.register(_name)(_tfds(_name))

SCENE_DATASETS = ('shapes', 'shapes_edit', 'shapes_video', 'shapes_world')


def get_source(name: str, *, split: str, **kwargs):
  """Builds the registered source `name` for `split` (see module docstring).

  Raises:
    ValueError: unknown name (the message lists the valid ones) or split.
  """
  return SOURCES.get(name)(split=split, **kwargs)


def names() -> list[str]:
  return SOURCES.names()
