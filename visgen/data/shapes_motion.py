"""Video data: shape scenes whose objects move and bounce; moving digits.

Motion is closed-form: an object with start position p0 and velocity v on the
interval [lo, hi] is at lo + tri(p0 - lo + v * t) at frame t, where tri
reflects at both ends (a triangle wave of period 2 (hi - lo)). So frame t is a
pure function of (seed, index, t) and bounces are exact elastic reflections
off the image border (objects pass over each other in their z-order).
"""

import dataclasses

import numpy as np

from visgen.data import digits as digits_lib
from visgen.data import indexed
from visgen.data import shapes


def bounce(p0, v, t, lo, hi):
  """Position at time t of a point bouncing elastically inside [lo, hi]."""
  length = np.maximum(hi - lo, 1e-6)
  s = np.mod(p0 - lo + v * t, 2 * length)
  return lo + np.where(s <= length, s, 2 * length - s)


class ShapesVideoSource(indexed.IndexedSource):
  """Sequences of moving, bouncing shapes.

  Keys: 'image' (frame 0, uint8 (H, W, 3)), 'video' uint8 (T, H, W, 3),
  'instance_masks' uint8 (T, H, W, 1), 'positions' float32
  (T, MAX_OBJECTS, 2) object centres (x, y) in pixels, 'velocities' float32
  (MAX_OBJECTS, 2) in pixels per frame, 'label', 'attributes', 'objects'
  and 'caption' of frame 0 (see `shapes.render_example`).
  """

  def __init__(self, *, split: str = 'train', resolution: int = 32,
               seed: int = 0, num_examples: int | None = None,
               num_frames: int = 8, max_speed: float | None = None):
    shapes.split_rng(split, seed, 0)
    self.split, self.resolution, self.seed = split, resolution, seed
    self.num_frames = num_frames
    # Default: up to an eighth of the side per frame (visible, not jumpy).
    self.max_speed = max_speed or resolution / 8
    self.num_examples = num_examples or shapes.DEFAULT_SIZE[split]

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = self.check_index(index)
    res = self.resolution
    rng = shapes.split_rng(self.split, self.seed + 104_729, index)
    scene = shapes.sample_scene(rng, res)
    n = len(scene.objects)
    speed = rng.uniform(0.3, 1.0, n) * self.max_speed
    angle = rng.uniform(0, 2 * np.pi, n)
    vel = np.stack([speed * np.cos(angle), speed * np.sin(angle)], -1)
    video = np.zeros((self.num_frames, res, res, 3), np.uint8)
    masks = np.zeros((self.num_frames, res, res, 1), np.uint8)
    pos = np.zeros((self.num_frames, shapes.MAX_OBJECTS, 2), np.float32)
    for t in range(self.num_frames):
      objs = []
      for k, o in enumerate(scene.objects):
        r = o.half_extent(res)
        cx = float(bounce(o.cx, vel[k, 0], t, r, res - r))
        cy = float(bounce(o.cy, vel[k, 1], t, r, res - r))
        objs.append(dataclasses.replace(o, cx=cx, cy=cy))
        pos[t, k] = cx, cy
      image, ids, _ = shapes.render_layers(
          dataclasses.replace(scene, objects=tuple(objs)), res)
      video[t], masks[t, ..., 0] = image, ids
    first = shapes.render_example(scene, res)
    velocities = np.zeros((shapes.MAX_OBJECTS, 2), np.float32)
    velocities[:n] = vel
    return dict(
        image=video[0], video=video, instance_masks=masks, positions=pos,
        velocities=velocities, label=first['label'],
        attributes=first['attributes'], objects=first['objects'],
        caption=first['caption'],
    )


class MovingDigitsSource(indexed.IndexedSource):
  """Moving-MNIST-style sequences built from the embedded digits.

  `num_digits` digits of the given digits split, resized to `digit_size`
  (PIL bilinear), move with constant velocity and bounce off the borders of
  a `resolution` canvas; overlaps combine by pixelwise maximum.

  Keys: 'image' (frame 0, uint8 (H, W, 1)), 'video' uint8 (T, H, W, 1),
  'labels' int32 (num_digits,), 'label' int32 (the first digit's class),
  'positions' int32 (T, num_digits, 2) top-left corners (x, y).
  """

  def __init__(self, *, split: str = 'train', resolution: int = 32,
               seed: int = 0, num_examples: int | None = None,
               num_frames: int = 8, num_digits: int = 2,
               digit_size: int = 16):
    if digit_size > resolution:
      raise ValueError(f'digit_size={digit_size} exceeds resolution='
                       f'{resolution}.')
    data = digits_lib.load_digits_split(split, size=digit_size)
    self.images, self.labels = data['image'][..., 0], data['label']
    self.split, self.resolution, self.seed = split, resolution, seed
    self.num_frames, self.num_digits = num_frames, num_digits
    self.digit_size = digit_size
    self.num_examples = num_examples or shapes.DEFAULT_SIZE[split]

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = self.check_index(index)
    res, ds, n = self.resolution, self.digit_size, self.num_digits
    rng = shapes.split_rng(self.split, self.seed + 130_363, index)
    which = rng.integers(len(self.labels), size=n)
    p0 = rng.uniform(0, res - ds, size=(n, 2))
    angle = rng.uniform(0, 2 * np.pi, n)
    speed = rng.uniform(0.5, 1.0, n) * res / 10
    vel = np.stack([speed * np.cos(angle), speed * np.sin(angle)], -1)
    t = np.arange(self.num_frames, dtype=np.float64)[:, None, None]
    pos = np.round(bounce(p0[None], vel[None], t, 0.0, res - ds))
    pos = pos.astype(np.int32)
    video = np.zeros((self.num_frames, res, res, 1), np.uint8)
    for f in range(self.num_frames):
      for k in range(n):
        x, y = pos[f, k]
        patch = video[f, y:y + ds, x:x + ds, 0]
        np.maximum(patch, self.images[which[k]], out=patch)
    labels = self.labels[which].astype(np.int32)
    return dict(image=video[0], video=video, labels=labels,
                label=labels[0], positions=pos)
