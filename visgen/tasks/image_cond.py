"""Image conditions of the scene world, shared by the image-to-image tasks
(ControlNet, InstructPix2Pix, bridges): batch entries -> float maps on the
device, the held-out conditions of grids and evaluations, and the sampling
call they all make.

Control kinds (`CONTROLS`, name -> channels):
  edges          `shapes` 'edges' uint8 (H, W, 1) 0/255 -> {-1, 1}
  semantic_mask  'semantic_mask' uint8 (H, W, 1) 0..4 -> one-hot (H, W, 5)
                 in {-1, 1}
  keypoints      'keypoints' (3, 5, 2) xy px + 'keypoint_valid' (3, 5) ->
                 a Gaussian heat map (H, W, 1) (sigma 1 px) in [-1, 1]
  image / edited_image   uint8 (H, W, 3) -> [-1, 1]

`as_image` renders any of them as a 3-channel image in [-1, 1] (the space of
x0), which is what a bridge's source y must be: edges grey, masks in a fixed
palette (`MASK_PALETTE`).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from visgen import config_lib
from visgen import samplers
from visgen.data import preprocess
from visgen.validate import UserError

CONTROLS = {'edges': 1, 'semantic_mask': 5, 'keypoints': 1, 'image': 3,
            'edited_image': 3}
# Background black, then one colour per shape class (circle .. diamond).
MASK_PALETTE = np.array([[0, 0, 0], [230, 60, 60], [60, 200, 80],
                         [70, 100, 240], [240, 220, 60]], np.float32)
KEYPOINT_SIGMA = 1.0
CFG_KEYS = ('cfg_scale', 'cfg_rescale', 'cfg_interval', 'cfg_channels',
            'image_cfg_scale')


def check_kind(kind: str, what: str) -> str:
  if kind not in CONTROLS:
    raise UserError(f'{what} {kind!r} is not a scene-world condition. Valid '
                    f'choices: {", ".join(CONTROLS)}.')
  return kind


def batch_keys(kind: str) -> tuple[str, ...]:
  """The batch entries a condition kind reads."""
  return ('keypoints', 'keypoint_valid') if kind == 'keypoints' else (kind,)


def batch_spec(kind: str, batch_size: int, size: int
               ) -> dict[str, jax.ShapeDtypeStruct]:
  b, s = batch_size, size
  if kind == 'keypoints':
    return {'keypoints': jax.ShapeDtypeStruct((b, 3, 5, 2), jnp.float32),
            'keypoint_valid': jax.ShapeDtypeStruct((b, 3, 5), jnp.bool_)}
  ch = 3 if kind in ('image', 'edited_image') else 1
  return {kind: jax.ShapeDtypeStruct((b, s, s, ch), jnp.uint8)}


def _entry(batch: dict, key: str, shape_tail: tuple, what: str):
  if key not in batch:
    raise UserError(
        f'{what} reads batch entry {key!r}, which the batch lacks (it has '
        f'{", ".join(sorted(batch))}). Use a dataset that provides it '
        "('shapes' gives edges, semantic_mask and keypoints; 'shapes_edit' "
        "image and edited_image).")
  x = batch[key]
  if tuple(x.shape[1:]) != tuple(shape_tail):
    raise UserError(
        f'{what}: batch entry {key!r} has shape {tuple(x.shape)}, expected '
        f'(B, {", ".join(map(str, shape_tail))}). Render the condition at '
        'the resolution of the task (config.task.x_shape).')
  return x


def keypoint_heatmap(kps, valid, size: int) -> jax.Array:
  """(B, size, size, 1): max over valid keypoints of exp(-d^2 / 2 s^2)."""
  c = jnp.arange(size, dtype=jnp.float32) + 0.5
  gx, gy = c[None, :], c[:, None]                       # (1, S), (S, 1)
  kps = jnp.asarray(kps, jnp.float32).reshape(kps.shape[0], -1, 2)
  v = jnp.asarray(valid).reshape(valid.shape[0], -1)
  d2 = ((gx[None, None] - kps[..., 0, None, None]) ** 2
        + (gy[None, None] - kps[..., 1, None, None]) ** 2)  # (B, K, S, S)
  g = jnp.exp(-d2 / (2 * KEYPOINT_SIGMA ** 2)) * v[..., None, None]
  return jnp.max(g, axis=1)[..., None]


def control_map(batch: dict, kind: str, size: int, *,
                what: str = 'The task') -> jax.Array:
  """The float condition (B, size, size, CONTROLS[kind]) in [-1, 1]."""
  check_kind(kind, 'Condition')
  if kind == 'keypoints':
    kps = _entry(batch, 'keypoints', (3, 5, 2), what)
    valid = _entry(batch, 'keypoint_valid', (3, 5), what)
    return 2.0 * keypoint_heatmap(kps, valid, size) - 1.0
  if kind in ('image', 'edited_image'):
    return preprocess.to_float(_entry(batch, kind, (size, size, 3), what))
  x = _entry(batch, kind, (size, size, 1), what)
  if kind == 'edges':
    return jnp.asarray(x, jnp.float32) / 127.5 - 1.0
  onehot = jax.nn.one_hot(jnp.asarray(x[..., 0], jnp.int32), 5)
  return 2.0 * onehot - 1.0


def as_image(cmap: jax.Array, kind: str) -> jax.Array:
  """A condition map (from `control_map`) as a 3-channel image in [-1, 1]."""
  if kind in ('image', 'edited_image'):
    return cmap
  if kind == 'semantic_mask':
    rgb = (cmap + 1.0) / 2.0 @ jnp.asarray(MASK_PALETTE)  # one-hot @ palette
    return rgb / 127.5 - 1.0
  return jnp.broadcast_to(cmap[..., :1], cmap.shape[:-1] + (3,))


def to_uint8(cmap: np.ndarray, kind: str) -> np.ndarray:
  """Host-side picture of a condition map (media panels)."""
  img = np.asarray(as_image(jnp.asarray(cmap), kind))
  return preprocess.to_uint8(img)


def heldout_examples(config, n: int, *, split: str = 'test') -> dict:
  """The first n examples of `split` of config.data, batched (numpy), after
  the pipeline's host hooks (the tokenizer)."""
  from visgen import data  # pylint: disable=g-import-not-at-top
  from visgen.data import pipeline  # pylint: disable=g-import-not-at-top

  source = data.get_source(config.data['name'], split=split,
                           **pipeline.source_kwargs(config.data))
  hooks = pipeline.example_transforms(config.data)
  if n > len(source):
    raise UserError(f'Asked for {n} held-out conditions; the {split!r} '
                    f'split has {len(source)} examples.')
  out = []
  for i in range(n):
    ex = source[i]
    for h in hooks:
      ex = h(ex)
    out.append(ex)
  return {k: np.stack([np.asarray(e[k]) for e in out]) for k in out[0]}


class HeldoutCond:
  """sample_cond / eval_cond of a task conditioned on images from its own
  dataset (a bridge's sources, an edit's source and instruction, a dense
  task's scenes): grids and evaluation use the first held-out examples,
  through the task's own `cond(batch, None)` (no dropout)."""

  def sample_cond(self, spec) -> dict[str, np.ndarray]:
    n = int(spec['per_class']) if isinstance(spec, dict) else int(spec)
    ex = heldout_examples(self.config, n)
    return jax.tree.map(np.asarray, self.eval_cond(ex))

  def eval_cond(self, batch: dict) -> dict:
    return self.cond(batch, None)


def run_sampler(task, denoise, cond: dict, key, *, n: int, y=None,
                sampler: dict | None = None, return_info: bool = False):
  """Samples with the task's (or the given) sampler config; CFG keys of the
  sampler config are the task's business and are dropped here."""
  name, kw = config_lib.named(sampler or task.sampler_cfg)
  for k in CFG_KEYS:
    kw.pop(k, None)
  steps = kw.pop('steps')
  ts = samplers.make_grid(kw.pop('grid', 'auto'), steps, path=task.path,
                          sampler=name)
  return samplers.sample(name, denoise, key=key, shape=(n,) + task.x_shape,
                         cond=cond, y=y, path=task.path,
                         prediction=task.prediction, ts=ts,
                         return_info=return_info, **kw)


def sampler_option(task, name: str, default: Any) -> Any:
  """An option of the task's sampler config (e.g. cfg_scale)."""
  return dict(task.sampler_cfg).get(name, default)


def base_source(model_cfg: dict, workdir: str, *, what: str) -> str:
  """The weight source of a frozen base / warm start: 'workdir:DIR' if DIR
  is a visgen run; else (runlocal smoke runs, configs built before the base
  is trained) a randomly initialised base of `model_cfg`, written once as
  an .npz under visgen's cache, with a note in the run's log saying so."""
  import hashlib  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top

  if workdir and os.path.isdir(os.path.join(os.path.expanduser(workdir),
                                            'checkpoints')):
    return 'workdir:' + workdir
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from visgen import models  # pylint: disable=g-import-not-at-top
  from visgen import weights  # pylint: disable=g-import-not-at-top

  spec = json.dumps(dict(model_cfg), sort_keys=True, default=str)
  digest = hashlib.sha1(spec.encode()).hexdigest()[:12]
  path = os.path.expanduser(config_lib.visgen_cache(
      'random_bases', f'{digest}.npz'))
  if not os.path.exists(path):
    kw = dict(model_cfg)
    name = kw.pop('name')
    if isinstance(kw.get('dtype'), str):
      kw['dtype'] = {'float32': jnp.float32,
                     'bfloat16': jnp.bfloat16}[kw['dtype']]
    params = models.split_model(models.get_model(
        name, rngs=nnx.Rngs(0), **kw))[1]
    # Zero-initialised output layers would make the base output 0 and give
    # an adapter on it no gradient: a small perturbation everywhere.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(tree, [
        x + 0.02 * jax.random.normal(k, x.shape, x.dtype)
        for x, k in zip(leaves, keys)])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f'{path}.{os.getpid()}.tmp.npz'
    weights.save_npz(tmp, params)
    os.replace(tmp, path)
  config_lib.note(
      f'{what}: no trained base at {workdir or "(none given)"}; using a '
      f'RANDOMLY INITIALISED (and perturbed) base ({path}). Train the '
      'base first (python -m visgen.main --config=configs/shapes.py '
      '--workdir=DIR) and pass base=DIR.')
  return 'npz:' + path


def target_image(batch: dict, key: str, size: int, *, what: str):
  """x0 of a paired task: the batch's `key` image in [-1, 1] (a missing
  or misshapen entry is an error naming `what` and the key)."""
  return control_map({'image': batch[key]} if key in batch else {}, 'image',
                     size, what=what)


def require_pixel_space(task, name: str) -> None:
  """Paired tasks run in pixel space: a UserError for config.task.latent."""
  if getattr(task, 'codec', None) is not None:
    raise UserError(f'config.task.latent is not supported by the {name} '
                    'task yet (pixel space only).')
