"""The scene parser behind prompt accuracy (GenEval-style checks).

A generated scene is read back into objects and checked against its
caption, category by category, as GenEval (Ghosh et al. 2023) checks
object detections against a prompt:

  shape     every mentioned shape is there (each mention its own object)
  colour    ... with the mentioned colour
  size      ... and the mentioned size
  count     exactly as many objects as mentions
  position  every mentioned relation (left of / right of / above / below,
            by the dominant axis of the centre displacement, as the
            grammar of `visgen.data.shapes.caption`) holds between the
            objects matched to its two mentions
  overall   all of these at once, under one matching of mentions to objects

Reading a scene is two steps:
1. a per-pixel shape map (0 background, 1 + shape index): from a small
   fully-convolutional network trained by the project on the scene world's
   ground truth (`semantic_mask`, train split), or the ground truth itself
   (`tests` and the rule ceiling);
2. deterministic grouping: each object pixel takes the nearest of the six
   object colours; objects are the 4-connected components of one colour
   with at least `min_pixels` pixels, their shape the majority label of the
   map inside (a component whose second label holds 30% of it is two
   touching objects and is split by label: 0.3 chosen on the train split,
   where it gives the network's maps 0.829 overall and the true maps 0.931);
   an object's centre is the
   mean of its pixels and its size is large iff its bounding box's longer
   side exceeds `large_extent` = 9 pixels at 32x32 (scaled with resolution;
   chosen on the train split).

Its accuracy on real test scenes with their own captions is the ceiling
every generator's prompt accuracy is read against (`ceiling`, reported
beside the scores: with the ground-truth maps it measures the grouping
rules alone; with the network, the whole parser).
"""

import dataclasses
import hashlib
import itertools
import json
import os
from typing import Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import ndimage

from visgen import config_lib
from visgen import param_tree
from visgen import weights
from visgen.data import shapes

# Bumped whenever `group` changes: cached ceilings are keyed by it.
RULES_VERSION = 2
CATEGORIES = ('shape', 'colour', 'size', 'count', 'position', 'overall')
RELATIONS = ('left of', 'right of', 'above', 'below')


@dataclasses.dataclass(frozen=True)
class Found:
  """One object read from an image (pixel units, y down)."""

  shape: int
  colour: int
  size: int
  cx: float
  cy: float
  pixels: int


def nearest_colour(image_HxWx3: np.ndarray) -> np.ndarray:
  """(H, W) index of the nearest of the six object colours per pixel."""
  rgb = image_HxWx3.astype(np.float32)
  d = ((rgb[:, :, None, :] - shapes.COLOUR_VALUES[None, None].astype(
      np.float32)) ** 2).sum(-1)
  return d.argmin(-1)


def group(image_HxWx3: np.ndarray, shape_map_HxW: np.ndarray, *,
          min_pixels: int = 4, large_extent: float | None = None,
          split: float = 0.3
          ) -> list[Found]:
  """Objects of one image from its per-pixel shape map (see the module
  docstring); sorted by size of component, largest first."""
  h = image_HxWx3.shape[0]
  if large_extent is None:
    large_extent = 9.0 * h / 32  # Chosen on the train split (ground-truth maps).
  colour = nearest_colour(image_HxWx3)
  found = []

  def add(ys, xs, shape):
    extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    found.append(Found(shape=int(shape), colour=int(c),
                       size=int(extent > large_extent),
                       cx=float(xs.mean() + 0.5), cy=float(ys.mean() + 0.5),
                       pixels=len(ys)))

  is_object = shape_map_HxW > 0
  for c in np.unique(colour[is_object]):
    comps, n = ndimage.label(is_object & (colour == c))
    for k in range(1, n + 1):
      ys, xs = np.nonzero(comps == k)
      if len(ys) < min_pixels:
        continue
      votes = np.bincount(shape_map_HxW[ys, xs] - 1,
                          minlength=len(shapes.SHAPES))
      order = np.argsort(-votes)
      if votes[order[1]] < max(min_pixels, split * len(ys)):
        add(ys, xs, order[0])  # One object; stray labels at its edges.
        continue
      # Two objects of one colour touching: split by shape label.
      for s in np.nonzero(votes >= min_pixels)[0]:
        sub, m = ndimage.label((comps == k) & (shape_map_HxW == s + 1))
        for q in range(1, m + 1):
          sy, sx = np.nonzero(sub == q)
          if len(sy) >= min_pixels:
            add(sy, sx, s)
  return sorted(found, key=lambda f: -f.pixels)


def mentions(caption: str) -> tuple[list[tuple[int, int, int]],
                                    list[tuple[int, int, str]]]:
  """(objects (shape, colour, size) in caption order, relations (i, j,
  'left of'|...) meaning mention i is <rel> of mention j)."""
  objs = shapes.parse_caption(caption)
  rels = []
  rest = caption
  for i in range(len(objs) - 1):
    hit = [(rest.find(' ' + r + ' '), r) for r in RELATIONS
           if ' ' + r + ' ' in rest]
    if not hit:
      raise ValueError(f'Caption {caption!r}: no relation between mentions '
                       f'{i} and {i + 1}.')
    pos, rel = min(hit)
    rels.append((i, i + 1, rel))
    rest = rest[pos + len(rel) + 2:]
  return objs, rels


def _relation(a: Found, b: Found) -> str:
  dx, dy = a.cx - b.cx, a.cy - b.cy
  if abs(dx) >= abs(dy):
    return 'left of' if dx < 0 else 'right of'
  return 'above' if dy < 0 else 'below'


def check(caption: str, found: Sequence[Found]) -> dict[str, bool]:
  """Category -> whether the objects found satisfy the caption."""
  objs, rels = mentions(caption)
  m = len(objs)
  out = dict.fromkeys(CATEGORIES, False)
  out['count'] = len(found) == m
  if len(found) < m:
    # Not enough objects: no category that needs every mention holds.
    return out
  keys = {'shape': lambda o: o[:1], 'colour': lambda o: o[:2],
          'size': lambda o: o[:3]}
  for perm in itertools.permutations(range(len(found)), m):
    f = [found[p] for p in perm]
    props = [(x.shape, x.colour, x.size) for x in f]
    for cat, key in keys.items():
      if all(key(props[i]) == key(objs[i]) for i in range(m)):
        out[cat] = True
    pos_ok = all(_relation(f[i], f[j]) == r for i, j, r in rels)
    if pos_ok and all(props[i][:1] == objs[i][:1] for i in range(m)):
      out['position'] = True  # Relations between the right shapes.
    if pos_ok and props == list(objs) and out['count']:
      out['overall'] = True
  return out


def score(captions: Sequence[str], found: Sequence[Sequence[Found]]
          ) -> dict[str, float]:
  """Mean of each category over prompts (position over prompts with at
  least one relation), and `overall_<n>obj`: overall accuracy on the
  prompts that mention n objects (where compositions fail)."""
  rows = [check(c, f) for c, f in zip(captions, found)]
  counts = [len(shapes.parse_caption(c)) for c in captions]
  out = {}
  for cat in CATEGORIES:
    vals = [r[cat] for r, n in zip(rows, counts)
            if cat != 'position' or n > 1]
    out[cat] = float(np.mean(vals)) if vals else float('nan')
  for n in sorted(set(counts)):
    out[f'overall_{n}obj'] = float(np.mean(
        [r['overall'] for r, k in zip(rows, counts) if k == n]))
  return out


# ----------------------------------------------------------------------------
# The per-pixel shape network.
# ----------------------------------------------------------------------------


class ShapeSegNet(nnx.Module):
  """A small fully-convolutional net: (B, H, W, 3) in [-1, 1] -> (B, H, W,
  1 + len(SHAPES)) logits. Dilated 3x3 convolutions give a 31-pixel
  receptive field at full resolution (corners and sides of a whole large
  object) with no down-sampling to undo."""

  def __init__(self, *, rngs: nnx.Rngs, width: int = 32,
               dilations: Sequence[int] = (1, 1, 2, 4, 8, 1)):
    self.convs = nnx.List([
        nnx.Conv(3 if i == 0 else width, width, (3, 3),
                 kernel_dilation=(d, d), rngs=rngs)
        for i, d in enumerate(dilations)])
    self.out = nnx.Conv(width, 1 + len(shapes.SHAPES), (1, 1), rngs=rngs)

  def __call__(self, x):
    for conv in self.convs:
      x = jax.nn.gelu(conv(x))
    return self.out(x)


@dataclasses.dataclass(frozen=True)
class Recipe:
  resolution: int = 32
  width: int = 32
  num_train: int = 6000
  steps: int = 1200
  batch: int = 64
  lr: float = 2e-3
  seed: int = 0

  def digest(self) -> str:
    return hashlib.sha256(json.dumps(dataclasses.asdict(self),
                                     sort_keys=True).encode()).hexdigest()[:10]


def scenes(split: str, n: int, resolution: int):
  """The first n scenes of a split: uint8 images, shape maps, captions."""
  src = shapes.ShapesSource(split=split, resolution=resolution)
  ex = [src[i] for i in range(n)]
  return (np.stack([e['image'] for e in ex]),
          np.stack([e['semantic_mask'][..., 0] for e in ex]).astype(np.int32),
          [shapes.caption(src.scene(i)) for i in range(n)])


def _to_input(images_uint8):
  return jnp.asarray(images_uint8, jnp.float32) / 127.5 - 1.0


class SceneParser:
  """The trained shape network + grouping; trained once (seconds to a few
  minutes on 2 cores) and cached as $VISGEN_CACHE/feature_nets/
  scene_parser_<digest>.npz with its test accuracies beside it (.json)."""

  def __init__(self, recipe: Recipe = Recipe()):
    self.recipe = recipe
    self.path = os.path.expanduser(config_lib.visgen_cache(
        'feature_nets', f'scene_parser_v2_{recipe.digest()}'))
    model = ShapeSegNet(rngs=nnx.Rngs(recipe.seed), width=recipe.width)
    self.graphdef, params = nnx.split(model)
    if os.path.exists(self.path + '.npz'):
      with np.load(self.path + '.npz') as f:
        flat = {k: jnp.asarray(v) for k, v in f.items()}
      self.params = param_tree.rebuild(params, flat)
    else:
      self.params = self._train(params)
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
      tmp = f'{self.path}.{os.getpid()}.tmp.npz'
      weights.save_npz(tmp, self.params)  # keyed by parameter path
      os.replace(tmp, self.path + '.npz')
    self._apply = jax.jit(
        lambda p, x: nnx.merge(self.graphdef, p)(x).argmax(-1))

  def _train(self, params):
    r = self.recipe
    images, masks, _ = scenes('train', r.num_train, r.resolution)
    tx = optax.adam(optax.cosine_decay_schedule(r.lr, r.steps))
    opt = tx.init(params)
    graphdef = self.graphdef

    @jax.jit
    def step(params, opt, x, y):
      def loss_fn(p):
        logits = nnx.merge(graphdef, p)(x)
        return optax.softmax_cross_entropy_with_integer_labels(
            logits, y).mean()
      loss, g = jax.value_and_grad(loss_fn)(params)
      upd, opt = tx.update(g, opt, params)
      return optax.apply_updates(params, upd), opt, loss

    rng = np.random.default_rng(r.seed)
    for _ in range(r.steps):
      idx = rng.integers(0, len(images), r.batch)
      params, opt, _ = step(params, opt, _to_input(images[idx]),
                            jnp.asarray(masks[idx]))
    return params

  def shape_maps(self, images_uint8: np.ndarray, batch: int = 256
                 ) -> np.ndarray:
    out = [np.asarray(self._apply(self.params,
                                  _to_input(images_uint8[i:i + batch])))
           for i in range(0, len(images_uint8), batch)]
    return np.concatenate(out)

  def parse(self, images_uint8: np.ndarray) -> list[list[Found]]:
    maps = self.shape_maps(images_uint8)
    return [group(im, m) for im, m in zip(images_uint8, maps)]

  def ceiling(self, num: int = 500) -> dict[str, float]:
    """Prompt accuracy of real test scenes against their own captions
    (cached beside the weights), and the pixel accuracy of the shape map."""
    meta = self.path + f'_ceiling_v{RULES_VERSION}_{num}.json'
    if os.path.exists(meta):
      with open(meta) as f:
        return json.load(f)
    images, masks, captions = scenes('test', num, self.recipe.resolution)
    maps = self.shape_maps(images)
    out = score(captions, [group(i, m) for i, m in zip(images, maps)])
    out['pixel_accuracy'] = float(np.mean(maps == masks))
    tmp = f'{meta}.{os.getpid()}.tmp'
    with open(tmp, 'w') as f:
      json.dump(out, f)
    os.replace(tmp, meta)
    return out
