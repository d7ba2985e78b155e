"""Task outputs on the host and their writers: PNG grids, GIF, .npz / .npy.

A task turns samples into `Media` (`task.to_media(samples, cond)`); the loop,
sample mode and the evaluators only handle `Media`:

  kind 'image': samples uint8 (N, H, W, C)
  kind 'video': samples uint8 (N, T, H, W, C)
  kind 'array': samples float (N, ...) (vectors; written to .npz only)

`labels` (N,) are the classes the samples were drawn for (ADM's `arr_1`),
`condition` uint8 (N, H, W, C) an image shown left of each sample (a control
map, a source image: side-by-side condition | sample panels), `rows` the
number of grid rows (one per class for class grids).
"""

import dataclasses
import os
from typing import Sequence

import numpy as np
from PIL import Image

from visgen import logging_lib

KINDS = ('image', 'video', 'array')


@dataclasses.dataclass
class Media:
  """Samples on the host, with what they were conditioned on."""

  samples: np.ndarray
  kind: str = 'image'
  labels: np.ndarray | None = None
  condition: np.ndarray | None = None
  rows: int | None = None

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f'Unknown media kind {self.kind!r}. Valid choices: '
                       f'{", ".join(KINDS)}.')
    self.samples = np.asarray(self.samples)
    want = {'image': 4, 'video': 5}.get(self.kind)
    if want and (self.samples.ndim != want or self.samples.dtype != np.uint8):
      raise ValueError(
          f'{self.kind} media need uint8 samples of rank {want} '
          f'({"N, H, W, C" if want == 4 else "N, T, H, W, C"}), got '
          f'{self.samples.dtype} {self.samples.shape}.')

  def __len__(self) -> int:
    return self.samples.shape[0]

  def select(self, idx) -> 'Media':
    """The media of samples `idx` (a slice or index array)."""
    pick = lambda a: None if a is None else np.asarray(a)[idx]
    return dataclasses.replace(self, samples=self.samples[idx],
                               labels=pick(self.labels),
                               condition=pick(self.condition), rows=None)


def concat(parts: Sequence[Media]) -> Media:
  """One Media from batches of the same kind (labels/condition kept when
  every part has them)."""
  first = parts[0]
  join = lambda name: (None if any(getattr(p, name) is None for p in parts)
                       else np.concatenate([getattr(p, name) for p in parts]))
  return Media(np.concatenate([p.samples for p in parts]), kind=first.kind,
               labels=join('labels'), condition=join('condition'))


def preview(m: Media, *, per_row: int = 10) -> Media:
  """At most `per_row` samples per class (one row each), or per_row^2.

  Sample files hold every sample; the preview must stay small even for 50k.
  """
  if m.labels is None:
    out = m.select(slice(0, per_row**2))
    out.rows = m.rows if len(out) == len(m) else None
    return out
  classes = np.unique(m.labels)
  per = min(per_row, *(int(np.sum(m.labels == c)) for c in classes))
  idx = np.concatenate([np.flatnonzero(m.labels == c)[:per] for c in classes])
  out = m.select(idx)
  out.rows = len(classes)
  return out


def _rows(m: Media) -> int:
  return m.rows or max(int(np.sqrt(len(m))), 1)


def _tiles(m: Media, frames: np.ndarray) -> np.ndarray:
  """(N, H, W', C) tiles: the condition | sample panel when there is one."""
  if m.condition is None:
    return frames
  cond = np.asarray(m.condition, np.uint8)
  if cond.shape[-1] != frames.shape[-1]:  # grey condition, RGB samples
    cond = np.broadcast_to(cond[..., :1], cond.shape[:-1] + (
        frames.shape[-1],))
  gap = np.full(frames.shape[:2] + (1, frames.shape[-1]), 128, np.uint8)
  return np.concatenate([cond, gap, frames], axis=2)


def _by_class(m: Media) -> Media:
  """Labelled media regrouped one row per class (as many samples per row
  as every class has); unlabelled media as they are."""
  if m.labels is None or m.rows:
    return m
  return preview(m, per_row=len(m))


def grid(m: Media) -> np.ndarray:
  """The (H, W, C) grid of image media (first frames of a video): one row
  per class for labelled media, else `rows` (default: square)."""
  if m.kind == 'array':
    raise ValueError('array media have no image grid; write them with '
                     'write_npz.')
  m = _by_class(m)
  frames = m.samples[:, 0] if m.kind == 'video' else m.samples
  return logging_lib.image_grid(_tiles(m, frames), _rows(m))


def video_grid(m: Media) -> np.ndarray:
  """(T, H, W, C): the grid of every frame of video media."""
  if m.kind != 'video':
    raise ValueError(f'video_grid needs video media, got {m.kind!r}.')
  m = _by_class(m)
  return np.stack([logging_lib.image_grid(_tiles(m, m.samples[:, i]),
                                          _rows(m))
                   for i in range(m.samples.shape[1])])


def _pil(frame_HxWxC: np.ndarray, upscale: int) -> Image.Image:
  img = frame_HxWxC[..., 0] if frame_HxWxC.shape[-1] == 1 else frame_HxWxC
  pil = Image.fromarray(np.asarray(img, np.uint8))
  if upscale > 1:
    pil = pil.resize((pil.width * upscale, pil.height * upscale),
                     Image.Resampling.NEAREST)
  return pil


def write_png(path: str, m: Media, *, upscale: int = 4) -> str:
  with logging_lib.atomic_output(path) as tmp:  # Never half a file.
    _pil(grid(m), upscale).save(tmp, format='PNG')
  return path


def write_gif(path: str, m: Media, *, fps: float = 8.0,
              upscale: int = 4) -> str:
  """An animated GIF of the video grid (looping)."""
  frames = [_pil(f, upscale) for f in video_grid(m)]
  with logging_lib.atomic_output(path) as tmp:
    frames[0].save(tmp, format='GIF', save_all=True,
                   append_images=frames[1:],
                   duration=int(round(1000 / fps)), loop=0)
  return path


def write_npz(path: str, m: Media) -> str:
  """ADM's batch format: `arr_0` the samples (uint8 NHWC for images, NTHWC
  for video), `arr_1` the labels when there are any; `condition` beside."""
  arrays = {'arr_0': m.samples}
  if m.labels is not None:
    arrays['arr_1'] = np.asarray(m.labels)
  if m.condition is not None:
    arrays['condition'] = np.asarray(m.condition)
  with logging_lib.atomic_output(path) as tmp, open(tmp, 'wb') as f:
    np.savez(f, **arrays)
  return path


def write_npy(path: str, m: Media) -> str:
  with logging_lib.atomic_output(path) as tmp, open(tmp, 'wb') as f:
    np.save(f, m.samples)
  return path


def write_samples(stem: str, m: Media, *, upscale: int = 4) -> list[str]:
  """stem.npz with every sample plus a small preview: stem.png (images) or
  stem.gif (video). Returns the paths written."""
  os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
  out = [write_npz(stem + '.npz', m)]
  if m.kind == 'image':
    out.append(write_png(stem + '.png', preview(m), upscale=upscale))
  elif m.kind == 'video':
    out.append(write_gif(stem + '.gif', preview(m), upscale=upscale))
  return out
