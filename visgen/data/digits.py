"""scikit-learn's handwritten digits (1797 images of 8x8, 10 classes).

The data ships inside the scikit-learn wheel, so this source needs no network.
The split is fixed for the whole project: the 1797 indices are permuted by
`np.random.default_rng(0).permutation(1797)`; the first 1500 form 'train' and
the last 297 'test'. Pixel values 0..16 are scaled to 0..255 uint8 as
round(v * 255 / 16). `size` != 8 resizes with PIL's bilinear filter on the
uint8 8x8 image (documented, deterministic; e.g. `size=16`).
"""

import functools

import numpy as np
from PIL import Image

SPLITS = ('train', 'test')
NUM_TRAIN = 1500
NUM_EXAMPLES = 1797
NUM_CLASSES = 10


@functools.cache
def _load_all() -> tuple[np.ndarray, np.ndarray]:
  """Returns (images uint8 (1797, 8, 8), labels int32) in sklearn's order."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  labels = digits.target.astype(np.int32)
  return images, labels


def _split_indices(split: str) -> np.ndarray:
  if split not in SPLITS:
    raise ValueError(
        f'Unknown digits split {split!r}. Valid choices: {", ".join(SPLITS)}.'
    )
  perm = np.random.default_rng(0).permutation(NUM_EXAMPLES)
  return perm[:NUM_TRAIN] if split == 'train' else perm[NUM_TRAIN:]


def resize_uint8(images_NxHxW: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize (PIL) of uint8 grayscale images to size x size."""
  out = np.empty((images_NxHxW.shape[0], size, size), np.uint8)
  for i, im in enumerate(images_NxHxW):
    out[i] = np.asarray(
        Image.fromarray(im, mode='L').resize(
            (size, size), Image.Resampling.BILINEAR
        )
    )
  return out


@functools.cache
def _load_split_cached(split: str, size: int):
  images, labels = _load_all()
  idx = _split_indices(split)
  images, labels = images[idx], labels[idx]
  if size != 8:
    images = resize_uint8(images, size)
  images = images[..., None]
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def load_digits_split(split: str, *, size: int = 8) -> dict[str, np.ndarray]:
  """Loads the fixed digits split.

  Args:
    split: 'train' (1500 examples) or 'test' (297 examples).
    size: output side length; 8 is the native resolution, other sizes use a
      PIL bilinear resize.

  Returns:
    dict(image=uint8 (N, size, size, 1), label=int32 (N,)). Arrays are
    read-only views of a cache; copy before modifying.

  Raises:
    ValueError: unknown split or non-positive size.
  """
  if not isinstance(size, int) or size < 1:
    raise ValueError(f'digits size must be a positive int, got {size!r}.')
  images, labels = _load_split_cached(split, size)
  return dict(image=images, label=labels)
