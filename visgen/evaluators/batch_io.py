"""ADM's sample/reference batch format (.npz), read in streaming batches.

A batch file holds `arr_0`: uint8 NHWC images (any size, 1 or 3 channels).
A reference batch may also hold precomputed statistics `mu`, `sigma` (pool
features) and `mu_s`, `sigma_s` (spatial features), which ADM uses instead
of statistics of its `arr_0`. visgen's reference files add `feature_net`
(the network the statistics belong to; ADM's own files lack it and mean
Inception) and, optionally, `label`.

`arr_0` is read straight from the zip member batch by batch (like ADM's
`StreamingNpzArrayReader`), so 50k ImageNet images never sit in memory. A
missing, corrupted or truncated file, or one that does not hold uint8 NHWC
images with 1 or 3 channels, raises `validate.UserError` naming the file.
"""

import contextlib
import zipfile
import zlib

import numpy as np

from visgen import validate
from visgen.evaluators import frechet

# What a damaged .npz raises while it is opened or read.
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, ValueError,
                OSError, KeyError)


def _unreadable(path: str, e: Exception) -> validate.UserError:
  return validate.UserError(
      f'{path} is not a readable .npz batch ({type(e).__name__}: {e}). Fix: '
      'write it again with np.savez(path, images_NHWC_uint8) (an ADM batch).')


class StreamingImages:
  """`arr_0` of a batch file, read in batches without loading it whole."""

  def __init__(self, path: str, key: str = 'arr_0'):
    self.path = path
    self.key = key
    try:
      with self._open() as f:
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0
                       if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        self._offset = f.tell()
    except validate.UserError:
      raise
    except FileNotFoundError as e:
      raise validate.UserError(f'Batch file {path} does not exist. Fix: '
                               'check the path.') from e
    except _READ_ERRORS as e:
      raise _unreadable(path, e) from e
    if fortran or dtype.hasobject:
      raise validate.UserError(
          f'{path}:{key} must be a C-order numeric array.')
    if len(shape) != 4 or dtype != np.uint8 or shape[-1] not in (1, 3):
      raise validate.UserError(
          f'{path}: {key} must be uint8 NHWC images with 1 or 3 channels, '
          f'got {dtype} {tuple(shape)}. Fix: save uint8 images in [0, 255] '
          'shaped (N, H, W, C).')
    if shape[0] == 0:
      raise validate.UserError(f'{path}: {key} holds no images.')
    self.shape, self.dtype = tuple(shape), dtype

  @contextlib.contextmanager
  def _open(self):
    with zipfile.ZipFile(self.path) as z:
      name = f'{self.key}.npy'
      if name not in z.namelist():
        raise validate.UserError(
            f'{self.path} has no {self.key!r}; an ADM batch stores images in '
            'arr_0 (np.savez(path, images_NHWC_uint8)).'
        )
      with z.open(name) as f:
        yield f

  def __len__(self) -> int:
    return self.shape[0]

  def batches(self, batch_size: int):
    """Yields consecutive (<= batch_size, H, W, C) arrays, read in order."""
    per_item = int(np.prod(self.shape[1:]))
    with self._open() as f:
      f.read(self._offset)  # zip members are streams: skip the header
      for start in range(0, len(self), batch_size):
        n = min(batch_size, len(self) - start)
        try:
          buf = f.read(n * per_item)
        except _READ_ERRORS as e:
          raise _unreadable(self.path, e) from e
        if len(buf) != n * per_item:
          raise validate.UserError(
              f'{self.path}: {self.key} is truncated (images {start}..'
              f'{start + n - 1} of {len(self)} missing). Fix: write the '
              'file again.')
        yield np.frombuffer(buf, np.uint8).reshape((n,) + self.shape[1:])

  def check_matches(self, ref: 'StreamingImages') -> None:
    """Samples must have the reference's size and channels: metrics across
    resolutions compare the resize, not the model."""
    if self.shape[1:] != ref.shape[1:]:
      raise validate.UserError(
          f'The samples {self.path} are {_hwc(self.shape)} but the reference '
          f'{ref.path} is {_hwc(ref.shape)}. Fix: evaluate against a '
          'reference batch of the same size and channels (make one with '
          'python -m visgen.evaluators.make_reference).')


def _hwc(shape) -> str:
  return f'{shape[1]}x{shape[2]} {"grey" if shape[3] == 1 else "RGB"}'


def iter_batches(images, batch_size: int):
  """Batches of an array or a `StreamingImages`."""
  if isinstance(images, StreamingImages):
    yield from images.batches(batch_size)
  else:
    for s in range(0, len(images), batch_size):
      yield np.asarray(images[s : s + batch_size])


def read_reference_stats(path: str, feature_net: str):
  """(pool stats, spatial stats) stored in `path` for `feature_net`, or Nones.

  ADM files (no `feature_net` key) count as Inception statistics.
  """
  try:
    f = np.load(path)
  except _READ_ERRORS as e:
    raise _unreadable(path, e) from e
  with f:
    if 'mu' not in f.files:
      return None, None
    owner = str(f['feature_net']) if 'feature_net' in f.files else 'inception'
    if owner != feature_net:
      return None, None
    pool = frechet.GaussianStats(mu=f['mu'], sigma=f['sigma'])
    spatial = (frechet.GaussianStats(mu=f['mu_s'], sigma=f['sigma_s'])
               if 'mu_s' in f.files else None)
  return pool, spatial


def write_batch(path: str, images_NxHxWxC: np.ndarray, **extra) -> None:
  """Writes an ADM batch (`arr_0`) plus extra arrays (stats, labels, ...)."""
  images = np.asarray(images_NxHxWxC)
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(
        f'ADM batches hold uint8 NHWC images, got {images.dtype} '
        f'{images.shape}.'
    )
  extra = {k: v for k, v in extra.items() if v is not None}
  np.savez(path, images, **extra)
