"""Image transforms for real datasets: ADM's centre crop and random flips.

`adm_center_crop` follows the preprocessing of ADM (Dhariwal & Nichol 2021,
guided-diffusion's `center_crop_arr`): while the short side is at least twice
the target, halve the image with a BOX filter (an exact area average, which
avoids aliasing that one big bicubic step would cause); then resize with
BICUBIC so that the short side equals the target (each side rounded); then
take the centred target x target crop (offset (extent - target) // 2).
"""

import numpy as np
from PIL import Image


def adm_center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """ADM centre crop of a uint8 HWC (or HW) image to (size, size[, C])."""
  squeeze = image.ndim == 3 and image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if squeeze else image)
  while min(pil.size) >= 2 * size:
    pil = pil.resize(tuple(s // 2 for s in pil.size),
                     resample=Image.Resampling.BOX)
  scale = size / min(pil.size)
  pil = pil.resize(tuple(round(s * scale) for s in pil.size),
                   resample=Image.Resampling.BICUBIC)
  arr = np.asarray(pil)
  top = (arr.shape[0] - size) // 2
  left = (arr.shape[1] - size) // 2
  arr = arr[top:top + size, left:left + size]
  return arr[..., None] if squeeze else arr


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Horizontal flip of an HWC image with probability 1/2."""
  return image[:, ::-1] if rng.random() < 0.5 else image
