"""A procedural scene world whose every example carries its ground truth.

A scene is one to three flat-coloured objects (circle, square, triangle,
diamond), each with a colour from `OBJECT_COLOURS`, a size (small/large), a
continuous centre and a z-order (later objects are drawn on top), over a
background that is a solid colour from `BACKGROUND_COLOURS` or a gentle
linear gradient between two of them. Background colours are neutral (greys,
beige) and object colours saturated, so no background pixel ever equals an
object colour.

Rendering is plain numpy with no anti-aliasing: a pixel (row i, column j)
belongs to an object iff its centre (x = j + 0.5, y = i + 0.5) is inside the
shape. Masks therefore agree exactly with pixels: every pixel of an object's
visible (instance) mask has exactly that object's colour.

Ground truth per example (`render_example`):
  image          uint8 (H, W, 3)
  label          int32 (): shape class (index into `SHAPES`) of the object
                 with the most visible pixels (ties: the lower object). 4
                 classes.
  attributes     float32 (MAX_OBJECTS * ATTR_DIM,): per object slot
                 [present, one-hot shape (4), one-hot colour (6), size
                 (0 small / 1 large), cx / W, cy / H]; empty slots are 0.
  objects        int32 (MAX_OBJECTS, 4): [present, shape, colour, size].
  caption        str, from the grammar in `caption`.
  instance_mask  uint8 (H, W, 1): 0 background, k + 1 for object slot k
                 (visible pixels only).
  semantic_mask  uint8 (H, W, 1): 0 background, shape index + 1.
  edges          uint8 (H, W, 1): 255 where a 4-neighbour has a different
                 instance id (object outlines and occlusion boundaries).
  keypoints      float32 (MAX_OBJECTS, 5, 2): (x, y) in pixel units; point 0
                 is the centre, 1..4 the vertices (circle: top, right, bottom,
                 left extreme points; triangle: 3 vertices).
  keypoint_valid bool (MAX_OBJECTS, 5): which keypoints exist.

Every example is a pure function of (split, seed, index): the generator is
`np.random.default_rng([split_id, seed, index])`.
"""

import dataclasses
import functools
import re

import numpy as np

from visgen.data import indexed

SHAPES = ('circle', 'square', 'triangle', 'diamond')
OBJECT_COLOURS = {
    'red': (220, 40, 40),
    'green': (40, 180, 60),
    'blue': (50, 80, 230),
    'yellow': (235, 210, 40),
    'magenta': (210, 50, 210),
    'cyan': (40, 200, 220),
}
COLOUR_NAMES = tuple(OBJECT_COLOURS)
COLOUR_VALUES = np.array(list(OBJECT_COLOURS.values()), np.uint8)
BACKGROUND_COLOURS = {
    'black': (16, 16, 16),
    'dark gray': (64, 64, 64),
    'gray': (120, 120, 120),
    'light gray': (185, 185, 185),
    'white': (240, 240, 240),
    'beige': (225, 212, 185),
}
BG_VALUES = np.array(list(BACKGROUND_COLOURS.values()), np.float32)
SIZES = ('small', 'large')
# Half-extent of an object as a fraction of the image side.
SIZE_FRACTION = (0.12, 0.22)
MAX_OBJECTS = 3
ATTR_DIM = 1 + len(SHAPES) + len(COLOUR_NAMES) + 1 + 2
NUM_KEYPOINTS = 5
# An object must keep at least this fraction of its area visible, so that the
# caption never names an object one cannot see.
MIN_VISIBLE_FRACTION = 0.5
SPLIT_IDS = {'train': 0, 'test': 1}
DEFAULT_SIZE = {'train': 50_000, 'test': 10_000}


@dataclasses.dataclass(frozen=True)
class Obj:
  """One object: indices into SHAPES / COLOUR_NAMES / SIZES, centre in px."""

  shape: int
  colour: int
  size: int
  cx: float
  cy: float

  def half_extent(self, unit: float) -> float:
    """Half-extent in pixels; `unit` is the image side sizes refer to."""
    return SIZE_FRACTION[self.size] * unit


@dataclasses.dataclass(frozen=True)
class Background:
  """Solid (c0 == c1) or a linear gradient from c0 to c1 along `angle`."""

  c0: int
  c1: int
  angle: float


@dataclasses.dataclass(frozen=True)
class Scene:
  objects: tuple[Obj, ...]  # bottom to top (z-order)
  background: Background


def split_rng(split: str, seed: int, index: int) -> np.random.Generator:
  if split not in SPLIT_IDS:
    raise ValueError(
        f'Unknown split {split!r}. Valid choices: {", ".join(SPLIT_IDS)}.'
    )
  return np.random.default_rng([SPLIT_IDS[split], seed, index])


@functools.cache
def pixel_grid(resolution: int) -> tuple[np.ndarray, np.ndarray]:
  """Pixel-centre coordinates x (columns), y (rows), each (H, W)."""
  c = np.arange(resolution, dtype=np.float32) + 0.5
  return np.meshgrid(c, c, indexing='xy')


def _triangle_vertices(obj: Obj, unit: float) -> np.ndarray:
  r = obj.half_extent(unit)
  angles = np.deg2rad([-90.0, 30.0, 150.0])  # apex up (y grows downwards)
  return np.stack(
      [obj.cx + r * np.cos(angles), obj.cy + r * np.sin(angles)], -1
  )


def coverage(obj: Obj, resolution: int, *, unit: float | None = None
             ) -> np.ndarray:
  """Boolean (H, W) mask of pixel centres inside `obj` (ignoring occlusion).

  `unit` (default: `resolution`) is the length object sizes are relative to;
  a larger canvas (the world map) keeps object sizes of its views.
  """
  x, y = pixel_grid(resolution)
  return inside(obj, x, y, unit=resolution if unit is None else unit)


def inside(obj: Obj, x: np.ndarray, y: np.ndarray, *, unit: float
           ) -> np.ndarray:
  """Whether the points (x, y) (any matching shapes) lie inside `obj`."""
  r = obj.half_extent(unit)
  dx, dy = x - obj.cx, y - obj.cy
  name = SHAPES[obj.shape]
  if name == 'circle':
    return dx * dx + dy * dy <= r * r
  if name == 'square':
    s = 0.85 * r  # a square of equal half-extent looks much larger
    return (np.abs(dx) <= s) & (np.abs(dy) <= s)
  if name == 'diamond':
    return np.abs(dx) + np.abs(dy) <= r
  if name == 'triangle':
    v = _triangle_vertices(obj, unit)
    result = np.ones(np.shape(x), bool)
    for a, b in ((v[0], v[1]), (v[1], v[2]), (v[2], v[0])):
      # Vertices run clockwise on screen: inside is where the cross is >= 0.
      cross = (b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0])
      result &= cross >= 0
    return result
  raise ValueError(f'Unknown shape index {obj.shape}.')


def keypoints(obj: Obj, resolution: int) -> tuple[np.ndarray, np.ndarray]:
  """(NUM_KEYPOINTS, 2) xy keypoints and (NUM_KEYPOINTS,) validity."""
  r = obj.half_extent(resolution)
  c = np.array([obj.cx, obj.cy], np.float32)
  pts = np.zeros((NUM_KEYPOINTS, 2), np.float32)
  valid = np.ones(NUM_KEYPOINTS, bool)
  pts[0] = c
  name = SHAPES[obj.shape]
  if name == 'triangle':
    pts[1:4] = _triangle_vertices(obj, resolution)
    valid[4] = False
  else:
    s = 0.85 * r if name == 'square' else r
    if name == 'square':
      offsets = [(-s, -s), (s, -s), (s, s), (-s, s)]
    else:  # circle extremes and diamond vertices: top, right, bottom, left
      offsets = [(0, -s), (s, 0), (0, s), (-s, 0)]
    pts[1:] = c + np.array(offsets, np.float32)
  return pts, valid


def background_image(bg: Background, resolution: int) -> np.ndarray:
  """uint8 (H, W, 3) background."""
  if bg.c0 == bg.c1:  # solid: skip the gradient arithmetic
    return np.tile(np.round(BG_VALUES[bg.c0]).astype(np.uint8),
                   (resolution, resolution, 1))
  x, y = pixel_grid(resolution)
  u = (np.cos(bg.angle) * x + np.sin(bg.angle) * y) / resolution
  u = (u - u.min()) / max(u.max() - u.min(), 1e-6)
  c0, c1 = BG_VALUES[bg.c0], BG_VALUES[bg.c1]
  img = c0 + u[..., None] * (c1 - c0)
  return np.round(img).astype(np.uint8)


def render_layers(scene: Scene, resolution: int, *,
                  unit: float | None = None):
  """Returns (image uint8 (H,W,3), instance ids uint8 (H,W), coverages)."""
  image = background_image(scene.background, resolution)
  ids = np.zeros((resolution, resolution), np.uint8)
  covs = []
  for k, obj in enumerate(scene.objects):
    cov = coverage(obj, resolution, unit=unit)
    covs.append(cov)
    image[cov] = COLOUR_VALUES[obj.colour]
    ids[cov] = k + 1
  return image, ids, covs


def edge_map(ids: np.ndarray) -> np.ndarray:
  """uint8 (H, W) 255 where a 4-neighbour has a different instance id."""
  e = np.zeros(ids.shape, bool)
  dv = ids[1:] != ids[:-1]
  dh = ids[:, 1:] != ids[:, :-1]
  e[1:] |= dv
  e[:-1] |= dv
  e[:, 1:] |= dh
  e[:, :-1] |= dh
  return np.where(e, 255, 0).astype(np.uint8)


def describe(obj: Obj) -> str:
  return f'a {SIZES[obj.size]} {COLOUR_NAMES[obj.colour]} {SHAPES[obj.shape]}'


def relation(a: Obj, b: Obj) -> str:
  """Where `a` is relative to `b`, along the dominant axis of displacement."""
  dx, dy = a.cx - b.cx, a.cy - b.cy
  if abs(dx) >= abs(dy):
    return 'left of' if dx < 0 else 'right of'
  return 'above' if dy < 0 else 'below'


def caption(scene: Scene) -> str:
  """Grammar (objects in z-order o0, o1, o2):

  1 object:  "<o0>"
  2 objects: "<o0> <rel(o0, o1)> <o1>"
  3 objects: "<o0> <rel(o0, o1)> <o1>, which is <rel(o1, o2)> <o2>"
  where <o> = "a <size> <colour> <shape>" and rel is left of / right of /
  above / below by the dominant axis of the centre displacement.
  """
  o = scene.objects
  text = describe(o[0])
  if len(o) >= 2:
    text += f' {relation(o[0], o[1])} {describe(o[1])}'
  if len(o) == 3:
    text += f', which is {relation(o[1], o[2])} {describe(o[2])}'
  return text


_MENTION = re.compile(
    r'\ba (' + '|'.join(SIZES) + r') (' + '|'.join(COLOUR_NAMES) + r') ('
    + '|'.join(SHAPES) + r')\b'
)


def parse_caption(text: str) -> list[tuple[int, int, int]]:
  """The (shape, colour, size) triples mentioned in a caption, in order."""
  return [
      (SHAPES.index(s), COLOUR_NAMES.index(c), SIZES.index(z))
      for z, c, s in _MENTION.findall(text)
  ]


def attributes(scene: Scene, resolution: int) -> np.ndarray:
  out = np.zeros((MAX_OBJECTS, ATTR_DIM), np.float32)
  for k, obj in enumerate(scene.objects):
    out[k, 0] = 1.0
    out[k, 1 + obj.shape] = 1.0
    out[k, 1 + len(SHAPES) + obj.colour] = 1.0
    out[k, 1 + len(SHAPES) + len(COLOUR_NAMES)] = obj.size
    out[k, -2:] = obj.cx / resolution, obj.cy / resolution
  return out.reshape(-1)


def visible_enough(scene: Scene, resolution: int) -> bool:
  """Every object keeps MIN_VISIBLE_FRACTION of its area (and >= 4 px)."""
  _, ids, covs = render_layers(scene, resolution)
  for k, cov in enumerate(covs):
    vis = np.count_nonzero(ids == k + 1)
    if vis < 4 or vis < MIN_VISIBLE_FRACTION * np.count_nonzero(cov):
      return False
  return True


def sample_object(rng: np.random.Generator, resolution: int) -> Obj:
  size = int(rng.integers(len(SIZES)))
  r = SIZE_FRACTION[size] * resolution
  cx, cy = rng.uniform(r, resolution - r, size=2)
  return Obj(
      shape=int(rng.integers(len(SHAPES))),
      colour=int(rng.integers(len(COLOUR_NAMES))),
      size=size,
      cx=float(cx),
      cy=float(cy),
  )


def sample_background(rng: np.random.Generator) -> Background:
  c0 = int(rng.integers(len(BACKGROUND_COLOURS)))
  if rng.random() < 0.5:
    return Background(c0, c0, 0.0)
  # Gentle gradient: towards a neighbouring neutral tone only.
  c1 = int(np.clip(c0 + rng.choice([-1, 1]), 0, len(BG_VALUES) - 1))
  return Background(c0, c1, float(rng.uniform(0, 2 * np.pi)))


def sample_scene(
    rng: np.random.Generator,
    resolution: int,
    *,
    num_objects: int | None = None,
    exclude: frozenset[tuple[int, int]] = frozenset(),
) -> Scene:
  """Samples objects until all of them stay sufficiently visible (and, with
  `exclude`, none has an excluded (colour, shape) pair)."""
  n = int(rng.integers(1, MAX_OBJECTS + 1)) if num_objects is None else (
      num_objects)
  if not 1 <= n <= MAX_OBJECTS:
    raise ValueError(f'num_objects must be in [1, {MAX_OBJECTS}], got {n}.')
  bg = sample_background(rng)
  for _ in range(10_000):
    scene = Scene(tuple(sample_object(rng, resolution) for _ in range(n)), bg)
    if exclude and any((o.colour, o.shape) in exclude for o in scene.objects):
      continue
    if visible_enough(scene, resolution):
      return scene
  raise RuntimeError(f'Could not place {n} visible objects at resolution '
                     f'{resolution}; use a larger resolution.')


def render_example(scene: Scene, resolution: int) -> dict[str, np.ndarray]:
  """All ground truth for one scene (see the module docstring)."""
  image, ids, _ = render_layers(scene, resolution)
  shape_of = np.array([0] + [o.shape + 1 for o in scene.objects], np.uint8)
  counts = np.bincount(ids.ravel(), minlength=len(scene.objects) + 1)[1:]
  kps = np.zeros((MAX_OBJECTS, NUM_KEYPOINTS, 2), np.float32)
  kvalid = np.zeros((MAX_OBJECTS, NUM_KEYPOINTS), bool)
  objects = np.zeros((MAX_OBJECTS, 4), np.int32)
  for k, obj in enumerate(scene.objects):
    kps[k], kvalid[k] = keypoints(obj, resolution)
    objects[k] = (1, obj.shape, obj.colour, obj.size)
  return dict(
      image=image,
      label=np.int32(scene.objects[int(np.argmax(counts))].shape),
      attributes=attributes(scene, resolution),
      objects=objects,
      caption=np.str_(caption(scene)),
      instance_mask=ids[..., None],
      semantic_mask=shape_of[ids][..., None],
      edges=edge_map(ids)[..., None],
      keypoints=kps,
      keypoint_valid=kvalid,
  )


def heldout_pairs(pairs) -> frozenset[tuple[int, int]]:
  """(colour, shape) names -> a set of (colour index, shape index); an
  unknown name is a ValueError listing the valid ones."""
  out = set()
  for pair in pairs or ():
    if len(pair) != 2:
      raise ValueError(f'heldout pair {pair!r} must be (colour, shape), '
                       "e.g. ('red', 'triangle').")
    colour, shape = pair
    if colour not in COLOUR_NAMES or shape not in SHAPES:
      raise ValueError(
          f'heldout pair {pair!r}: colours are {", ".join(COLOUR_NAMES)}; '
          f'shapes are {", ".join(SHAPES)}.')
    out.add((COLOUR_NAMES.index(colour), SHAPES.index(shape)))
  return frozenset(out)


def has_heldout(scene: Scene, pairs: frozenset[tuple[int, int]]) -> bool:
  return any((o.colour, o.shape) in pairs for o in scene.objects)


class ShapesSource(indexed.IndexedSource):
  """Random-access source of scenes: `len` and `[index]` -> dict of arrays.

  Args:
    split: 'train' or 'test' (disjoint random streams).
    resolution: image side in pixels (default 32).
    seed: stream seed; (split, seed, index) determines the example.
    num_examples: virtual length (default 50_000 train / 10_000 test).
    num_objects: fixed object count, or None for 1..3 uniformly.
    heldout: (colour, shape) name pairs that never occur in the train split
      (its scenes are resampled until none does); the test split keeps
      every pair, so captions that combine a held-out pair measure
      compositional generalisation (`heldout_pairs`).
  """

  def __init__(self, *, split: str = 'train', resolution: int = 32,
               seed: int = 0, num_examples: int | None = None,
               num_objects: int | None = None,
               heldout: tuple[tuple[str, str], ...] = ()):
    split_rng(split, seed, 0)  # validates the split name
    if resolution < 8:
      raise ValueError(f'resolution must be >= 8, got {resolution}.')
    self.split, self.resolution, self.seed = split, resolution, seed
    self.num_objects = num_objects
    self.num_examples = num_examples or DEFAULT_SIZE[split]
    self.heldout = heldout_pairs(heldout)
    self._exclude = self.heldout if split == 'train' else frozenset()

  def scene(self, index: int) -> Scene:
    index = self.check_index(index)
    rng = split_rng(self.split, self.seed, index)
    return sample_scene(rng, self.resolution, num_objects=self.num_objects,
                        exclude=self._exclude)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return render_example(self.scene(int(index)), self.resolution)
