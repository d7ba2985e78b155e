"""An action-driven world: a camera over a larger procedural map.

Each (split, seed, index) defines a map of `map_factor * resolution` pixels
per side: a gentle gradient background with many shapes (sizes relative to
the view, so objects look as in `shapes`). The camera sees a
`resolution x resolution` window; an action moves it by `step` pixels
(default a quarter of the view) and is clamped at the map border, so the next
frame is an exact function of (frame's camera, action). World models can be
evaluated against `World.step` / `World.view` for any action sequence.

ACTIONS: 0 noop, 1 up, 2 down, 3 left, 4 right.
"""

import functools

import numpy as np

from visgen.data import indexed
from visgen.data import shapes

ACTIONS = ('noop', 'up', 'down', 'left', 'right')
_MOVES = {0: (0, 0), 1: (0, -1), 2: (0, 1), 3: (-1, 0), 4: (1, 0)}


class World:
  """One procedural map with a movable camera (top-left corner (x, y))."""

  def __init__(self, rng: np.random.Generator, *, resolution: int = 32,
               map_factor: int = 4, objects_per_view: float = 2.5,
               step: int | None = None):
    self.resolution = resolution
    self.size = map_factor * resolution
    self.step_px = step or max(1, resolution // 4)
    n = min(250, int(round(objects_per_view * map_factor**2)))
    objs = []
    for _ in range(n):
      o = shapes.sample_object(rng, resolution)
      # Positions over the whole map; sizes stay relative to the view.
      r = o.half_extent(resolution)
      cx, cy = rng.uniform(r, self.size - r, size=2)
      objs.append(shapes.Obj(o.shape, o.colour, o.size, float(cx), float(cy)))
    bg = shapes.sample_background(rng)
    self.scene = shapes.Scene(tuple(objs), bg)
    # Same rule as shapes.render_layers, but each object is only tested in
    # its bounding box: the map is 16x a view, objects are small.
    image = shapes.background_image(bg, self.size)
    sem = np.zeros((self.size, self.size), np.uint8)
    x, y = shapes.pixel_grid(self.size)
    for o in objs:
      r = o.half_extent(resolution)
      y0, y1 = int(max(0, o.cy - r - 1)), int(min(self.size, o.cy + r + 2))
      x0, x1 = int(max(0, o.cx - r - 1)), int(min(self.size, o.cx + r + 2))
      win = (slice(y0, y1), slice(x0, x1))
      cov = shapes.inside(o, x[win], y[win], unit=resolution)
      image[win][cov] = shapes.COLOUR_VALUES[o.colour]
      sem[win][cov] = o.shape + 1
    self.map_image = image
    self.map_semantic = sem

  def clamp(self, camera) -> np.ndarray:
    hi = self.size - self.resolution
    return np.clip(np.asarray(camera, np.int32), 0, hi)

  def step(self, camera, action: int) -> np.ndarray:
    """Camera after `action` (an index into ACTIONS)."""
    if not 0 <= int(action) < len(ACTIONS):
      raise ValueError(f'Unknown action {action}. Valid: 0..4 = {ACTIONS}.')
    dx, dy = _MOVES[int(action)]
    cam = np.asarray(camera, np.int32)
    return self.clamp(cam + self.step_px * np.array([dx, dy], np.int32))

  def view(self, camera) -> np.ndarray:
    x, y = self.clamp(camera)
    return self.map_image[y:y + self.resolution, x:x + self.resolution]

  def view_semantic(self, camera) -> np.ndarray:
    x, y = self.clamp(camera)
    return self.map_semantic[y:y + self.resolution, x:x + self.resolution]


class ShapesWorldSource(indexed.IndexedSource):
  """Random-access trajectories of (frames, actions) in procedural worlds.

  Keys: 'image' (frame 0), 'video' uint8 (T, H, W, 3), 'actions' int32
  (T - 1,) where actions[t] moves frame t to frame t + 1, 'camera' int32
  (T, 2) top-left (x, y) per frame, 'semantic_masks' uint8 (T, H, W, 1).

  Actions are uniform over ACTIONS; with `persistence` p > 0 each action
  after the first repeats the previous one with probability p (else it is
  drawn uniformly), so trajectories travel instead of jittering in place
  (world-model training data, `configs/world_shapes.py`). p = 0 draws
  exactly the same trajectories as before the option existed.
  """

  def __init__(self, *, split: str = 'train', resolution: int = 32,
               seed: int = 0, num_examples: int | None = None,
               num_frames: int = 8, map_factor: int = 4,
               persistence: float = 0.0):
    shapes.split_rng(split, seed, 0)
    if not 0.0 <= float(persistence) <= 1.0:
      raise ValueError(f'persistence must be in [0, 1], got {persistence}.')
    self.split, self.resolution, self.seed = split, resolution, seed
    self.num_frames, self.map_factor = num_frames, map_factor
    self.persistence = float(persistence)
    self.num_examples = num_examples or shapes.DEFAULT_SIZE[split]

  # The source lives as long as its pipeline; the cache is bounded.
  @functools.lru_cache(maxsize=64)  # noqa: B019
  def world(self, index: int) -> World:
    index = self.check_index(index)
    rng = shapes.split_rng(self.split, self.seed + 15_485_863, index)
    return World(rng, resolution=self.resolution, map_factor=self.map_factor)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    w = self.world(index)
    # A separate stream for the trajectory: the map stays cacheable.
    rng = shapes.split_rng(self.split, self.seed + 32_452_843, index)
    cam = w.clamp(rng.integers(0, w.size - self.resolution + 1, size=2))
    actions = rng.integers(len(ACTIONS), size=self.num_frames - 1)
    if self.persistence > 0:  # Extra draws only here: p = 0 is unchanged.
      keep = rng.random(size=actions.shape) < self.persistence
      for i in range(1, len(actions)):
        if keep[i]:
          actions[i] = actions[i - 1]
    cams = [cam]
    for a in actions:
      cams.append(w.step(cams[-1], a))
    video = np.stack([w.view(c) for c in cams])
    sem = np.stack([w.view_semantic(c) for c in cams])[..., None]
    return dict(image=video[0], video=video,
                actions=actions.astype(np.int32),
                camera=np.stack(cams).astype(np.int32), semantic_masks=sem)
