"""Paired editing data: a scene, an instruction, and the edited scene.

Edit types (`EDIT_TYPES`):
  recolour  "make the circle green"          colour of the target changes
  move      "move the square to the right"   centre shifts by a quarter of
                                             the image side (left/right/up/
                                             down; the object stays inside)
  resize    "make the red triangle large"    size flips small <-> large
The target is named by its shape when that is unique in the scene, else by
colour and shape (targets that would still be ambiguous are not chosen). An
edit changes only what it says: the other objects, the background and the
z-order are untouched, so pixels outside the target's old and new visible
masks are identical (`edit_mask` marks the pixels allowed to change).
"""

import dataclasses

import numpy as np

from visgen.data import indexed
from visgen.data import shapes

EDIT_TYPES = ('recolour', 'move', 'resize')
DIRECTIONS = {
    'left': (-1, 0), 'right': (1, 0), 'up': (0, -1), 'down': (0, 1)
}


def _referring_expression(scene: shapes.Scene, k: int) -> str | None:
  obj = scene.objects[k]
  same_shape = [o for o in scene.objects if o.shape == obj.shape]
  if len(same_shape) == 1:
    return f'the {shapes.SHAPES[obj.shape]}'
  same_both = [o for o in same_shape if o.colour == obj.colour]
  if len(same_both) == 1:
    return (f'the {shapes.COLOUR_NAMES[obj.colour]} '
            f'{shapes.SHAPES[obj.shape]}')
  return None


def _try_edit(rng, scene: shapes.Scene, k: int, kind: str, resolution: int):
  """Returns (edited object, instruction text) or None if not possible."""
  obj = scene.objects[k]
  ref = _referring_expression(scene, k)
  if ref is None:
    return None
  if kind == 'recolour':
    colour = int(rng.choice(
        [c for c in range(len(shapes.COLOUR_NAMES)) if c != obj.colour]))
    return (dataclasses.replace(obj, colour=colour),
            f'make {ref} {shapes.COLOUR_NAMES[colour]}')
  if kind == 'resize':
    size = 1 - obj.size
    new = dataclasses.replace(obj, size=size)
    r = new.half_extent(resolution)
    # Growing near a border would leave the image: clamp by moving is not
    # allowed (it would be a second edit), so skip such targets.
    if not (r <= obj.cx <= resolution - r and r <= obj.cy <= resolution - r):
      return None
    return new, f'make {ref} {shapes.SIZES[size]}'
  if kind == 'move':
    r = obj.half_extent(resolution)
    step = resolution / 4
    names = [
        d for d, (dx, dy) in DIRECTIONS.items()
        if r <= obj.cx + dx * step <= resolution - r
        and r <= obj.cy + dy * step <= resolution - r
    ]
    if not names:
      return None
    d = str(rng.choice(names))
    dx, dy = DIRECTIONS[d]
    new = dataclasses.replace(obj, cx=obj.cx + dx * step,
                              cy=obj.cy + dy * step)
    where = {'left': 'to the left', 'right': 'to the right', 'up': 'up',
             'down': 'down'}[d]
    return new, f'move {ref} {where}'
  raise ValueError(
      f'Unknown edit type {kind!r}. Valid choices: {", ".join(EDIT_TYPES)}.')


def sample_edit(rng: np.random.Generator, resolution: int,
                edit_types=EDIT_TYPES):
  """Samples (scene, edited scene, target index, edit type, instruction)."""
  while True:
    scene = shapes.sample_scene(rng, resolution)
    kind = str(rng.choice(edit_types))
    k = int(rng.integers(len(scene.objects)))
    result = _try_edit(rng, scene, k, kind, resolution)
    if result is None:
      continue
    new_obj, instruction = result
    objects = list(scene.objects)
    objects[k] = new_obj
    edited = dataclasses.replace(scene, objects=tuple(objects))
    # Both scenes must show every object clearly, else captions mislead.
    if shapes.visible_enough(edited, resolution):
      return scene, edited, k, kind, instruction


class ShapesEditSource(indexed.IndexedSource):
  """Random-access paired edit examples.

  Keys: everything of `shapes.render_example` for the source scene, the same
  keys prefixed with 'edited_' for the edited scene, 'instruction' (str),
  'edit_type' (int32 index into EDIT_TYPES), 'target' (int32 object slot),
  'edit_mask' (uint8 (H, W, 1), 255 on the union of the target's visible
  masks before and after: the only pixels an edit may change).
  """

  def __init__(self, *, split: str = 'train', resolution: int = 32,
               seed: int = 0, num_examples: int | None = None,
               edit_types=EDIT_TYPES):
    shapes.split_rng(split, seed, 0)
    for kind in edit_types:
      if kind not in EDIT_TYPES:
        raise ValueError(f'Unknown edit type {kind!r}. Valid choices: '
                         f'{", ".join(EDIT_TYPES)}.')
    self.split, self.resolution, self.seed = split, resolution, seed
    self.edit_types = tuple(edit_types)
    self.num_examples = num_examples or shapes.DEFAULT_SIZE[split]

  def scenes(self, index: int):
    index = self.check_index(index)
    # Seed offset keeps edit streams distinct from plain `shapes` streams.
    rng = shapes.split_rng(self.split, self.seed + 7_919, index)
    return sample_edit(rng, self.resolution, self.edit_types)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    scene, edited, k, kind, instruction = self.scenes(int(index))
    before = shapes.render_example(scene, self.resolution)
    after = shapes.render_example(edited, self.resolution)
    changed = (before['instance_mask'] == k + 1) | (
        after['instance_mask'] == k + 1)
    out = dict(before)
    out.update({f'edited_{key}': v for key, v in after.items()})
    out.update(
        instruction=np.str_(instruction),
        edit_type=np.int32(EDIT_TYPES.index(kind)),
        target=np.int32(k),
        edit_mask=np.where(changed, 255, 0).astype(np.uint8),
    )
    return out
