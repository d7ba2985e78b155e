"""Pixel conventions: uint8 images on the host, float32 in [-1, 1] for models.

Sources and pipelines always carry uint8 HWC images (small, exact, cheap to
shard); the training loop converts on device with `to_float`. `to_uint8` is
the inverse used for sample grids and metrics.
"""

import numpy as np


def to_float(image_uint8):
  """Maps uint8 pixels 0..255 to float32 in [-1, 1] as x / 127.5 - 1.

  Works on numpy and jax arrays alike (only uses arithmetic and astype).
  """
  return image_uint8.astype(np.float32) / 127.5 - 1.0


def to_uint8(x_float):
  """Maps floats in [-1, 1] to uint8: clip, scale by 127.5, round.

  Out-of-range values are clipped (samplers overshoot); rounding (not
  truncation) makes `to_uint8(to_float(u)) == u` exact for every uint8 u.
  Accepts numpy or jax arrays and returns a numpy array.
  """
  x = np.asarray(x_float, dtype=np.float32)
  x = np.clip((x + 1.0) * 127.5, 0.0, 255.0)
  return np.round(x).astype(np.uint8)
