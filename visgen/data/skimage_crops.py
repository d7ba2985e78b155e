"""Crops of scikit-image's bundled photographs, for restoration demos.

The photographs ship inside the scikit-image wheel (no network). Whole
photographs are held out for 'test' so that test crops are never seen in
training. Grayscale photographs are replicated to 3 channels. Each photo is
first shrunk by an integer factor `downscale` with a BOX filter (more scene
content per crop), then a `crop_size` square is cut at a position drawn from
`np.random.default_rng([split_id, seed, index])`.

Items: 'image' uint8 (crop_size, crop_size, 3); 'label' int32, the index of
the source photograph in PHOTOS[split].
"""

import functools

import numpy as np
from PIL import Image

from visgen.data import indexed

PHOTOS = {
    'train': ('astronaut', 'coffee', 'rocket', 'hubble_deep_field',
              'immunohistochemistry', 'camera', 'coins', 'brick', 'grass'),
    'test': ('chelsea', 'moon', 'gravel'),
}
_SPLIT_IDS = {'train': 0, 'test': 1}


@functools.cache
def load_photos(split: str, downscale: int) -> tuple[np.ndarray, ...]:
  import skimage.data  # pylint: disable=g-import-not-at-top

  out = []
  for name in PHOTOS[split]:
    img = np.asarray(getattr(skimage.data, name)(), np.uint8)
    if img.ndim == 2:
      img = np.repeat(img[..., None], 3, axis=-1)
    img = img[..., :3]
    if downscale > 1:
      h, w = img.shape[0] // downscale, img.shape[1] // downscale
      img = np.asarray(Image.fromarray(img).resize(
          (w, h), resample=Image.Resampling.BOX))
    img.setflags(write=False)
    out.append(img)
  return tuple(out)


class SkimageCropsSource(indexed.IndexedSource):
  """Random-access deterministic crops (see the module docstring)."""

  def __init__(self, *, split: str = 'train', crop_size: int = 64,
               downscale: int = 2, seed: int = 0,
               num_examples: int | None = None):
    if split not in PHOTOS:
      raise ValueError(
          f'Unknown split {split!r}. Valid choices: {", ".join(PHOTOS)}.')
    self.photos = load_photos(split, downscale)
    smallest = min(min(p.shape[:2]) for p in self.photos)
    if crop_size > smallest:
      raise ValueError(f'crop_size={crop_size} exceeds the smallest photo '
                       f'side {smallest} at downscale={downscale}.')
    self.split, self.crop_size, self.seed = split, crop_size, seed
    self.num_examples = num_examples or (10_000 if split == 'train' else 1000)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = self.check_index(index)
    rng = np.random.default_rng([_SPLIT_IDS[self.split], self.seed, index])
    k = int(rng.integers(len(self.photos)))
    photo, c = self.photos[k], self.crop_size
    y = int(rng.integers(photo.shape[0] - c + 1))
    x = int(rng.integers(photo.shape[1] - c + 1))
    return dict(image=np.ascontiguousarray(photo[y:y + c, x:x + c]),
                label=np.int32(k))
