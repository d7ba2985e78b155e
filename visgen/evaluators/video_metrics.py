r"""Video metrics on the moving scene world (`shapes_video`): FVD-style
Fréchet distance on a project-trained video net, per-frame shapes-FID, and
a physics check by oracle tracking.

  python -m visgen.evaluators.video_metrics --floor [--n=500] \
      [--out=experiments/results/video/video_metrics_floor.json]

trains (or loads) the video net and prints its test accuracy, the
real-against-real floors of both Fréchet distances and the physics floor
and baselines on real test clips, plus the FVD / frame-FID of degraded real
clips (frozen, time-shuffled) as a sanity check.

API (all videos uint8 (N, T, H, W, 3); `visgen.validate.UserError` with the
fix for anything else):

  real_clips(split, n, *, resolution=16, num_frames=8) -> dict(video,
      positions, objects, velocities, label)   the first n clips of a split
  fvd(gen, real) -> float                      shapes-video-FVD
  fvd_floor(n, *, resolution=16, num_frames=8) -> float
  frame_fid(gen, real) -> float                per-frame shapes-FID
  frame_fid_floor(n, *, resolution=16, num_frames=8) -> float
  track(videos, objects, start_positions) -> dict(positions, found, pixels)
  physics_error(gen, true_positions, *, context_frames, objects=None) -> dict
  physics_floor(n, *, resolution=16, num_frames=8, context_frames=2) -> dict

**The video net** (`shapes_video`, recipe `RECIPES['shapes_video']`, cached
as `$VISGEN_CACHE/feature_nets/shapes_video_<hash>.npz` + `.json` like the
image feature nets and trained on first use): a (2+1)-D CNN. Its canonical
input is **8 frames of 16x16 RGB** (the clips of configs/video_shapes.py);
square frames of another size are resized to 16x16 (bilinear, as the image
nets do), other frame counts or channel counts are a UserError. Four
blocks, each a 3x3 spatial conv applied per frame (widths 16, 32, 64, 96,
strides 1, 2, 2, 2) and, in the last three, a kernel-3 temporal conv at
every pixel (strides 1, 1, 2), GELU after each; then average + max pooling
over (T, H, W) and a dense 128-d GELU layer: the feature space of FVD
(true 3-D convolutions are 10x slower on the 2 CPU cores). Trained (Adam
2e-3, cosine decay, 2000 steps of 32 clips, one-pixel random shifts) on
8000 train clips against exact ground truth (loss: the two cross-entropies
+ 5 x the mean binary cross-entropy of the bits; at weight 1 the colour
bits stay at chance within this budget):
  label    4-way: shape of the object with most visible pixels at frame 0
           (the `shapes` net's label);
  motion   4-way: the quadrant of that object's velocity (sign vx, sign vy);
  bits     25: the `shapes` net's 11 scene bits of frame 0 (each shape
           present, each colour present, some object large), that object
           fast (speed >= 0.65 of the maximum: half the range), some object
           bounces during the clip, and for each colour: an object of that
           colour moves right / moves down at frame 0;
so its features see both appearance and motion (a frozen clip has frame
FID at the floor but a large FVD; see the numbers below).

**Fréchet distances** follow ADM's formula (`frechet.frechet_distance`) on
the video net's 128-d features (FVD) or on the `shapes` image net's 128-d
features of all frames pooled as images (frame-FID; 16x16 frames are
upsampled to its 32x32 input by `classifier.prepare`, as shapes-FID of
16x16 samples is everywhere in the repo). Both are biased upwards at small
N, so each floor is measured at the size the samples are scored at: the
first n train clips against the first n test clips (disjoint streams) of
the same resolution and length; score n generated clips against
`real_clips('test', n)` and read the number against `*_floor(n)`.

**Tracking** (`track`, oracle: it is given each object's colour from the
ground truth and its position at frame 0): a pixel belongs to palette
colour c if c is its nearest object colour and the RGB distance is below
`COLOUR_TOLERANCE` = 58 (half the smallest distance between a background
and an object colour, 116.6); an object's pixels are those of its colour
(objects sharing a colour: split by 2-means on the pixel coordinates,
seeded at their constant-velocity predictions from the previous frames).
An object with fewer than `MIN_PIXELS` = 2 pixels is *lost* in that frame.
Its centre is then fitted (`fit_centre`): the sub-pixel position where
the object's known shape and size best explain its pixels, pixels of the
other objects counting as possible occluders (the middle of the best
positions on a 1/20-pixel grid). On real clips this brings the error from
0.35 px (plain centroid of the visible pixels: pixel quantisation and
occlusion; `fit=False`) to 0.23 px (300 test clips, visible object-frames);
the tracker's error on real clips is the floor of the physics check.

**Physics check** (`physics_error`): the generated clips continue real
context frames 0..k-1; each object is tracked through the generated clip
and compared with the true `positions` of the same clips at frames k..T-1,
over the object-frames where the object is visible in the TRUE clip
(>= MIN_PIXELS pixels when the true scene is rendered; all present objects
if `objects` is not given, when the tracker also falls back to plain
centroids). A lost object counts `lost_penalty_px` = half
the frame side (8 px at 16x16; about the mean distance 0.52 side between
two uniform points in the frame, the error of a guess anywhere) in
`error_px`; `error_tracked_px` averages the found ones only and
`lost_fraction` counts the lost. Baselines from the true context
positions over the same object-frames: `static_error_px` (frozen at frame
k-1), `constant_velocity_error_px` (p[k-1] + (t - k + 1)(p[k-1] -
p[k-2]), bounces ignored; k >= 2) and `bounce_error_px` (the same velocity
reflected elastically
at the walls [r, side - r], the world's own physics; exact unless a bounce
falls inside the context; needs `objects`), each also per frame
(`*_by_frame_px`). With `real_videos`, the same tracking of the real clips
gives the floor (`real_error_px`, ...); `physics_floor(n)` is that floor
for the first n test clips.

Measured (`--floor`, n = 500 clips per side, 16x16, 8 frames; 2 shared CPU
cores at load average 7.3; experiments/results/video/
video_metrics_floor.json):

  video net (test, 1000 clips)  label 0.729, motion quadrant 0.739, scene
                                bits 0.828, motion bits 0.886; trained in
                                284 s at that load
  FVD floor (train vs test)     3.24
  frame-FID floor               7.11
  train clips degraded, against test clips:
                    FVD    frame-FID
    frozen after 2  26.8   10.4       (motion gone: 8x the FVD floor)
    shuffled        13.9    7.11      (same frames, wrong order)
    time-reversed    2.89   7.11      (reversed elastic motion is physical)
  physics (px), k given frames:  k = 1    k = 2
    real clips (tracker floor)   0.252    0.256   (lost 0.1%)
    static baseline              3.83     3.53
    constant velocity            -        3.02
    bounce (world physics)       -        0.321
    frozen clips (tracked)       3.84     3.55
    time-reversed clips          3.61     3.42
"""

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import time
from typing import Callable

import flax.nnx as nnx
import flax.traverse_util as traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from visgen import validate
from visgen.data import shapes
from visgen.data import shapes_motion
from visgen.evaluators import feature_nets
from visgen.evaluators import frechet
from visgen.evaluators import inception

_RECIPE_VERSION = 1
# Half the smallest RGB distance between a background and an object colour.
COLOUR_TOLERANCE = 58.0
MIN_PIXELS = 2
_FAST = 0.65  # speed / max_speed threshold of the 'fast' bit
NUM_BITS = 11 + 2 + 2 * len(shapes.COLOUR_NAMES)


# ----------------------------------------------------------------------------
# Data and input checks.
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _clips(split: str, n: int, resolution: int, num_frames: int) -> dict:
  src = shapes_motion.ShapesVideoSource(split=split, resolution=resolution,
                                        num_frames=num_frames,
                                        num_examples=max(n, 1))
  ex = [src[i] for i in range(n)]
  out = {k: np.stack([e[k] for e in ex]) for k in
         ('video', 'positions', 'objects', 'velocities', 'label',
          'instance_masks')}
  for v in out.values():
    v.setflags(write=False)
  return out


def real_clips(split: str, n: int, *, resolution: int = 16,
               num_frames: int = 8) -> dict[str, np.ndarray]:
  """The first n clips of a `shapes_video` split (cached per process).

  Returns dict(video uint8 (n, T, H, W, 3), positions float32 (n, T, 3, 2)
  object centres (x, y) in pixels, objects int32 (n, 3, 4) [present, shape,
  colour, size], velocities float32 (n, 3, 2) px/frame at frame 0, label
  int32 (n,), instance_masks uint8 (n, T, H, W, 1)); read-only arrays.
  """
  if split not in shapes.SPLIT_IDS:
    raise validate.UserError(f'split={split!r} is invalid: use one of '
                             f'{", ".join(shapes.SPLIT_IDS)}.')
  if int(n) < 1 or int(num_frames) < 1 or int(resolution) < 8:
    raise validate.UserError(
        f'real_clips(n={n}, num_frames={num_frames}, resolution='
        f'{resolution}): need n >= 1, num_frames >= 1, resolution >= 8.')
  return dict(_clips(split, int(n), int(resolution), int(num_frames)))


def check_videos(videos, *, name: str = 'videos',
                 num_frames: int | None = None) -> np.ndarray:
  """uint8 (N, T, H, W, 3) with square frames, N >= 1, or a UserError."""
  x = np.asarray(videos)
  if x.dtype != np.uint8:
    raise validate.UserError(
        f'{name} must be uint8 (0..255), got {x.dtype}. Fix: convert with '
        'np.clip(np.round(x), 0, 255).astype(np.uint8) (scale [0, 1] or '
        '[-1, 1] data to 0..255 first).')
  if x.ndim != 5 or x.shape[-1] != 3:
    raise validate.UserError(
        f'{name} must have shape (N, T, H, W, 3) (RGB clips), got '
        f'{x.shape}.' + (' Fix: a single clip needs a leading batch axis '
                         '(x[None]).' if x.ndim == 4 and x.shape[-1] == 3
                         else ''))
  if x.shape[0] < 1 or x.shape[2] != x.shape[3] or x.shape[2] < 8:
    raise validate.UserError(
        f'{name}: need N >= 1 clips of square frames of side >= 8, got '
        f'shape {x.shape}.')
  if num_frames is not None and x.shape[1] != num_frames:
    raise validate.UserError(
        f'{name} have {x.shape[1]} frames; the video net takes exactly '
        f'{num_frames} (its canonical input is {num_frames} frames of '
        '16x16). Fix: score clips of that length (e.g. windows of '
        f'{num_frames} consecutive frames).')
  return x


def _check_pair(gen, real, *, num_frames=None):
  gen = check_videos(gen, name='generated videos', num_frames=num_frames)
  real = check_videos(real, name='real videos', num_frames=num_frames)
  if gen.shape[2:] != real.shape[2:]:
    raise validate.UserError(
        f'generated frames are {gen.shape[2]}x{gen.shape[3]} but real '
        f'frames {real.shape[2]}x{real.shape[3]}: compare clips of one '
        'resolution (real_clips(..., resolution=...)).')
  if min(len(gen), len(real)) < 2:
    raise validate.UserError('A Fréchet distance needs at least 2 clips on '
                             f'each side, got {len(gen)} and {len(real)}.')
  return gen, real


# ----------------------------------------------------------------------------
# The video feature network.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VideoRecipe:
  """Everything that determines the trained video net (hashed)."""

  resolution: int = 16  # of the training clips
  num_frames: int = 8
  input_size: int = 16
  widths: tuple[int, ...] = (16, 32, 64, 96)
  spatial_strides: tuple[int, ...] = (1, 2, 2, 2)
  temporal_strides: tuple[int, ...] = (0, 1, 1, 2)  # 0: no temporal conv
  norm: bool = False  # LayerNorm over channels after each conv
  feature_dim: int = 128
  num_train: int = 8000
  num_test: int = 1000
  steps: int = 2000
  batch_size: int = 32
  learning_rate: float = 2e-3
  bits_weight: float = 5.0  # of the mean binary cross-entropy of the bits
  seed: int = 0
  version: int = _RECIPE_VERSION

  def digest(self) -> str:
    return hashlib.sha1(repr(self).encode()).hexdigest()[:10]


RECIPES = {'shapes_video': VideoRecipe()}


def largest_object(instance_masks_NxHxW: np.ndarray, num_objects: int = 3
                   ) -> np.ndarray:
  """(N,) slot of the object with most visible pixels (ties: lower slot)."""
  m = np.asarray(instance_masks_NxHxW).reshape(len(instance_masks_NxHxW), -1)
  counts = np.stack([(m == k + 1).sum(-1) for k in range(num_objects)], -1)
  return counts.argmax(-1)


def targets(clips: dict, max_speed: float) -> dict[str, np.ndarray]:
  """label (N,), motion (N,) quadrant 0..3, bits (N, NUM_BITS) (see the
  module docstring) from `real_clips` ground truth."""
  objects, vel, pos = clips['objects'], clips['velocities'], clips['positions']
  n = len(objects)
  big = largest_object(clips['instance_masks'][:, 0, ..., 0])
  v = vel[np.arange(n), big]
  motion = (v[:, 0] >= 0).astype(np.int32) + 2 * (v[:, 1] >= 0)
  present = objects[..., 0] == 1
  fast = np.linalg.norm(v, axis=-1) >= _FAST * max_speed
  step = np.diff(pos, axis=1)  # (N, T-1, K, 2)
  flips = (np.sign(step[:, 1:]) * np.sign(step[:, :-1]) < 0).any(
      axis=(1, 3))  # (N, K)
  bounced = (flips & present).any(-1)
  right = np.zeros((n, len(shapes.COLOUR_NAMES)), np.float32)
  down = np.zeros_like(right)
  for k in range(objects.shape[1]):
    rows = np.nonzero(present[:, k])[0]
    col = objects[rows, k, 2]
    right[rows, col] = np.maximum(right[rows, col], vel[rows, k, 0] > 0)
    down[rows, col] = np.maximum(down[rows, col], vel[rows, k, 1] > 0)
  scene = feature_nets._attribute_targets(objects)  # pylint: disable=protected-access
  bits = np.concatenate([scene, fast[:, None], bounced[:, None], right, down],
                        -1).astype(np.float32)
  return dict(label=np.asarray(clips['label'], np.int32),
              motion=motion.astype(np.int32), bits=bits)


def prepare(videos, *, input_size: int):
  """uint8 (N, T, H, W, 3) -> float32 in [-1, 1] at input_size (bilinear)."""
  x = jnp.asarray(videos, jnp.float32)
  n, t, h, w, c = x.shape
  if (h, w) != (input_size, input_size):
    x = jax.image.resize(x, (n, t, input_size, input_size, c), 'bilinear')
  return x / 127.5 - 1.0


class VideoCNN(nnx.Module):
  """(2+1)-D CNN: per-frame 3x3 conv then per-pixel kernel-3 temporal
  conv, per block; average + max pooling; dense features; three heads."""

  def __init__(self, recipe: VideoRecipe, *, rngs: nnx.Rngs):
    r = recipe
    if not len(r.widths) == len(r.spatial_strides) == len(
        r.temporal_strides):
      raise ValueError(f'VideoRecipe: widths, spatial_strides and '
                       f'temporal_strides differ in length: {r}.')
    chans = (3,) + tuple(r.widths)
    self.spatial = nnx.List([
        nnx.Conv(chans[i], chans[i + 1], (3, 3),
                 strides=r.spatial_strides[i], rngs=rngs)
        for i in range(len(r.widths))])
    self.temporal = nnx.List([
        nnx.Conv(chans[i + 1], chans[i + 1], (3,),
                 strides=r.temporal_strides[i], rngs=rngs)
        if r.temporal_strides[i] else None
        for i in range(len(r.widths))])
    norm = lambda c: nnx.LayerNorm(c, rngs=rngs) if r.norm else None
    self.snorm = nnx.List([norm(c) for c in r.widths])
    self.tnorm = nnx.List([norm(c) if ts else None for c, ts in
                           zip(r.widths, r.temporal_strides)])
    self.dense = nnx.Linear(2 * r.widths[-1], r.feature_dim, rngs=rngs)
    self.head = nnx.Linear(r.feature_dim, len(shapes.SHAPES), rngs=rngs)
    self.motion_head = nnx.Linear(r.feature_dim, 4, rngs=rngs)
    self.bits_head = nnx.Linear(r.feature_dim, NUM_BITS, rngs=rngs)

  def __call__(self, x_NxTxHxWxC):
    x = x_NxTxHxWxC
    act = lambda norm, h: jax.nn.gelu(h if norm is None else norm(h))
    for sconv, tconv, snorm, tnorm in zip(self.spatial, self.temporal,
                                          self.snorm, self.tnorm):
      n, t, h, w, c = x.shape
      x = act(snorm, sconv(x.reshape(n * t, h, w, c)))
      _, h, w, c = x.shape
      if tconv is None:
        x = x.reshape(n, t, h, w, c)
        continue
      x = x.reshape(n, t, h, w, c).transpose(0, 2, 3, 1, 4)
      x = act(tnorm, tconv(x.reshape(n * h * w, t, c)))
      t = x.shape[1]
      x = x.reshape(n, h, w, t, c).transpose(0, 3, 1, 2, 4)
    pooled = jnp.concatenate([x.mean((1, 2, 3)), x.max((1, 2, 3))], -1)
    features = jax.nn.gelu(self.dense(pooled))
    return dict(features=features, logits=self.head(features),
                motion_logits=self.motion_head(features),
                bits_logits=self.bits_head(features))


def _split_data(recipe: VideoRecipe, split: str) -> tuple[np.ndarray, dict]:
  n = recipe.num_train if split == 'train' else recipe.num_test
  clips = real_clips(split, n, resolution=recipe.resolution,
                     num_frames=recipe.num_frames)
  return clips['video'], targets(clips, recipe.resolution / 8)


def _train(recipe: VideoRecipe) -> VideoCNN:
  video, tg = _split_data(recipe, 'train')
  x = np.asarray(prepare(video, input_size=recipe.input_size))
  model = VideoCNN(recipe, rngs=nnx.Rngs(recipe.seed))
  graphdef, params = nnx.split(model)
  tx = optax.adam(optax.cosine_decay_schedule(recipe.learning_rate,
                                              recipe.steps))
  opt_state = tx.init(params)

  def loss_fn(params, xb, yb, mb, bb):
    out = nnx.merge(graphdef, params)(xb)
    ce = optax.softmax_cross_entropy_with_integer_labels
    bits = optax.sigmoid_binary_cross_entropy(out['bits_logits'], bb).mean()
    return (ce(out['logits'], yb).mean() + ce(out['motion_logits'], mb).mean()
            + recipe.bits_weight * bits)

  @jax.jit
  def step(params, opt_state, xb, yb, mb, bb):
    loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb, mb, bb)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(recipe.seed)
  for _ in range(recipe.steps):
    idx = rng.choice(len(x), recipe.batch_size, replace=False)
    # One-pixel random shifts (the same for every frame of a clip), as the
    # image nets: generated clips are not pixel-exact renders.
    shift = rng.integers(-1, 2, size=2)
    xb = np.roll(x[idx], tuple(shift), axis=(2, 3))
    params, opt_state, _ = step(params, opt_state, xb, tg['label'][idx],
                                tg['motion'][idx], tg['bits'][idx])
  return nnx.merge(graphdef, params)


def cache_path(recipe: VideoRecipe, name: str = 'shapes_video') -> str:
  return os.path.join(inception.cache_dir(), 'feature_nets',
                      f'{name}_{recipe.digest()}')


class VideoNet:
  """The cached video net as a feature space: `net(videos)` -> dict(pool
  (N, feature_dim) features, logits, motion_logits, bits_logits)."""

  def __init__(self, recipe: VideoRecipe = RECIPES['shapes_video'], *,
               name: str = 'shapes_video', batch_size: int = 128):
    self.name, self.recipe, self.batch_size = name, recipe, batch_size
    path = cache_path(recipe, name)
    self.path = path
    self._meta_path = path + '.json'
    model = VideoCNN(recipe, rngs=nnx.Rngs(0))
    if os.path.exists(path + '.npz') and os.path.exists(self._meta_path):
      with np.load(path + '.npz') as f:
        flat = {tuple(k.split('/')): f[k] for k in f.files}
      state = nnx.state(model)
      nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(flat))
      nnx.update(model, state)
      with open(self._meta_path) as f:
        self.meta = json.load(f)
      self._set_model(model)
    else:
      t0 = time.time()
      model = _train(recipe)
      self.meta = dict(recipe=dataclasses.asdict(recipe),
                       train_seconds=round(time.time() - t0, 1), floors={})
      self._set_model(model)
      self.meta['test_accuracy'] = self._test_accuracy()
      os.makedirs(os.path.dirname(path), exist_ok=True)
      self._save_meta()  # before the .npz, whose presence means "cached"
      flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model)))
      tmp = f'{path}.{os.getpid()}.tmp.npz'
      np.savez(tmp, **{'/'.join(map(str, k)): np.asarray(v)
                       for k, v in flat.items()})
      os.replace(tmp, path + '.npz')

  def _set_model(self, model):
    graphdef, state = nnx.split(model)
    size = self.recipe.input_size

    @jax.jit
    def apply(state, videos):
      out = nnx.merge(graphdef, state)(prepare(videos, input_size=size))
      out['pool'] = out.pop('features')
      return out

    self._apply, self._state = apply, state

  def __call__(self, videos) -> dict[str, np.ndarray]:
    x = check_videos(videos, num_frames=self.recipe.num_frames)
    return inception.run_padded(self._apply, self._state, x,
                                self.batch_size)  # one shape: one compile

  def _test_accuracy(self) -> dict:
    video, tg = _split_data(self.recipe, 'test')
    out = self(video)
    return dict(
        label=float(np.mean(out['logits'].argmax(-1) == tg['label'])),
        motion=float(np.mean(out['motion_logits'].argmax(-1) == tg['motion'])),
        scene_bits=float(np.mean((out['bits_logits'][:, :11] > 0)
                                 == (tg['bits'][:, :11] > 0.5))),
        motion_bits=float(np.mean((out['bits_logits'][:, 11:] > 0)
                                  == (tg['bits'][:, 11:] > 0.5))))

  def _save_meta(self):
    tmp = f'{self._meta_path}.{os.getpid()}.tmp'
    with open(tmp, 'w') as f:
      json.dump(self.meta, f, indent=1, sort_keys=True)
    os.replace(tmp, self._meta_path)

  def floor(self, n: int, *, resolution: int = 16) -> float:
    """FVD of the first n train clips against the first n test clips
    (cached in the net's .json)."""
    key = f'fvd_{resolution}x{self.recipe.num_frames}_n{n}'
    if key not in self.meta['floors']:
      f = self.meta['floors']
      f[key] = fvd(real_clips('train', n, resolution=resolution,
                              num_frames=self.recipe.num_frames)['video'],
                   real_clips('test', n, resolution=resolution,
                              num_frames=self.recipe.num_frames)['video'],
                   net=self)
      self._save_meta()
    return self.meta['floors'][key]


_NETS: dict[str, VideoNet] = {}


def get_video_net(recipe: VideoRecipe | None = None) -> VideoNet:
  """The video net of `recipe` (default: the measured one), once per
  process; trained and cached on first use."""
  recipe = recipe or RECIPES['shapes_video']
  if recipe.digest() not in _NETS:
    _NETS[recipe.digest()] = VideoNet(recipe)
  return _NETS[recipe.digest()]


# ----------------------------------------------------------------------------
# Fréchet distances.
# ----------------------------------------------------------------------------


def _fd(a: np.ndarray, b: np.ndarray) -> float:
  return frechet.frechet_distance_stats(
      frechet.GaussianStats.from_features(a),
      frechet.GaussianStats.from_features(b))


def fvd(gen, real, *, net: VideoNet | None = None) -> float:
  """Fréchet distance between generated and real clips on the video net's
  features (shapes-video-FVD). Both uint8 (N, 8, H, W, 3), one H."""
  net = net or get_video_net()
  gen, real = _check_pair(gen, real, num_frames=net.recipe.num_frames)
  return _fd(net(gen)['pool'], net(real)['pool'])


def fvd_floor(n: int, *, resolution: int = 16, num_frames: int = 8,
              net: VideoNet | None = None) -> float:
  """Real-against-real FVD at sample size n: the first n train clips
  against the first n test clips (cached)."""
  net = net or get_video_net()
  if num_frames != net.recipe.num_frames:
    raise validate.UserError(
        f'fvd_floor(num_frames={num_frames}): the video net takes exactly '
        f'{net.recipe.num_frames} frames.')
  if int(n) < 2:
    raise validate.UserError(f'fvd_floor needs n >= 2 clips, got {n}.')
  return net.floor(int(n), resolution=int(resolution))


def _frame_features(videos: np.ndarray, net) -> np.ndarray:
  frames = videos.reshape((-1,) + videos.shape[2:])
  return np.asarray(net(frames)['pool'])


def frame_fid(gen, real, *, net: str | Callable = 'shapes') -> float:
  """Per-frame shapes-FID: every frame of every clip pooled as one image
  set, Fréchet distance on the `shapes` image net (or `net`, a feature-net
  name or a callable images -> dict(pool=...)). Any clip length."""
  gen, real = _check_pair(gen, real)
  net = feature_nets.get_feature_net(net) if isinstance(net, str) else net
  return _fd(_frame_features(gen, net), _frame_features(real, net))


@functools.lru_cache(maxsize=32)
def frame_fid_floor(n: int, *, resolution: int = 16, num_frames: int = 8
                    ) -> float:
  """Real-against-real frame-FID: frames of the first n train clips against
  those of the first n test clips (cached per process)."""
  if int(n) < 2:
    raise validate.UserError(f'frame_fid_floor needs n >= 2 clips, got {n}.')
  kw = dict(resolution=resolution, num_frames=num_frames)
  return frame_fid(real_clips('train', n, **kw)['video'],
                   real_clips('test', n, **kw)['video'])


# ----------------------------------------------------------------------------
# Oracle tracking and the physics check.
# ----------------------------------------------------------------------------


def palette_map(videos: np.ndarray, tolerance: float = COLOUR_TOLERANCE
                ) -> np.ndarray:
  """(..., H, W) int: the nearest object colour index where it is within
  `tolerance` (RGB distance), else -1 (background)."""
  x = np.asarray(videos, np.float32)
  pal = shapes.COLOUR_VALUES.astype(np.float32)
  d = ((x[..., None, :] - pal) ** 2).sum(-1)
  idx = d.argmin(-1)
  return np.where(np.take_along_axis(d, idx[..., None], -1)[..., 0]
                  < tolerance ** 2, idx, -1)


def _kmeans(pts: np.ndarray, seeds: np.ndarray, iters: int = 10
            ) -> np.ndarray:
  """Lloyd's k-means of pts (P, 2) from seeds (k, 2): (P,) cluster index."""
  c = seeds.astype(np.float64).copy()
  for _ in range(iters):
    lab = ((pts[:, None] - c[None]) ** 2).sum(-1).argmin(-1)
    new = np.stack([pts[lab == j].mean(0) if np.any(lab == j) else c[j]
                    for j in range(len(c))])
    if np.allclose(new, c):
      break
    c = new
  return ((pts[:, None] - c[None]) ** 2).sum(-1).argmin(-1)


def fit_centre(shape: int, size: int, mine, others, start, *,
               resolution: int) -> np.ndarray:
  """Sub-pixel centre (x, y) of a known shape from its pixels.

  Scores each candidate centre by |template & mine| - |template & ~mine &
  ~others| - |mine & ~template| (`others`: pixels of other objects, which
  may occlude it) on a coarse grid (+-2 px around `start`, step 1/4) then a
  fine one (+-1/4, step 1/20), and returns the mean of the best candidates
  of the fine grid (the middle of the centres consistent with the pixels).
  """
  obj = shapes.Obj(shape=int(shape), colour=0, size=int(size), cx=0.0,
                   cy=0.0)
  r = obj.half_extent(resolution)
  c = np.asarray(start, np.float64)
  for span, step in ((2.0, 0.25), (0.25, 0.05)):
    off = np.arange(-span, span + 1e-9, step)
    gx, gy = np.meshgrid(c[0] + off, c[1] + off, indexing='xy')
    gx, gy = gx.ravel(), gy.ravel()
    lo = np.floor(c - r - span - 1).astype(int).clip(0, resolution)
    hi = np.ceil(c + r + span + 1).astype(int).clip(0, resolution)
    ys, xs = np.mgrid[lo[1]:hi[1], lo[0]:hi[0]] + 0.5
    t = shapes.inside(obj, xs[None] - gx[:, None, None],
                      ys[None] - gy[:, None, None], unit=resolution)
    p = mine[None, lo[1]:hi[1], lo[0]:hi[0]]
    q = others[None, lo[1]:hi[1], lo[0]:hi[0]]
    score = ((t & p).sum((1, 2)) - (t & ~p & ~q).sum((1, 2))
             - (p & ~t).sum((1, 2)))
    best = score == score.max()
    c = np.array([gx[best].mean(), gy[best].mean()])
  return c


def track(videos, objects, start_positions, *, fit: bool = True,
          min_pixels: int = MIN_PIXELS,
          tolerance: float = COLOUR_TOLERANCE) -> dict[str, np.ndarray]:
  """Oracle tracking of known objects (see the module docstring).

  Args:
    videos: uint8 (N, T, H, W, 3).
    objects: int (N, K, 4) [present, shape, colour, size] (`real_clips`).
    start_positions: (N, K, 2) centres (x, y) at frame 0 (seeds the
      identities of objects that share a colour).
    fit: refine each centroid by fitting the object's known shape and size
      (`fit_centre`); False: plain centroids (shape and size unused).
  Returns:
    positions float64 (N, T, K, 2) (nan where lost or absent), found bool
    (N, T, K), pixels int (N, T, K) (pixels assigned to each object).
  """
  videos = check_videos(videos)
  objects = np.asarray(objects)
  start = np.asarray(start_positions, np.float64)
  n, t_len, h, w = videos.shape[:4]
  k_max = objects.shape[1] if objects.ndim == 3 else -1
  if objects.shape != (n, k_max, 4) or start.shape != (n, k_max, 2):
    raise validate.UserError(
        f'track: objects must be (N, K, 4) and start_positions (N, K, 2) '
        f'for N = {n} clips, got {objects.shape} and {start.shape}.')
  labels = palette_map(videos, tolerance)
  ys, xs = np.mgrid[0:h, 0:w]
  coords = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], -1)
  pos = np.full((n, t_len, k_max, 2), np.nan)
  found = np.zeros((n, t_len, k_max), bool)
  pixels = np.zeros((n, t_len, k_max), np.int64)
  for i in range(n):
    present = np.nonzero(objects[i, :, 0] == 1)[0]
    colours = {}
    for k in present:
      colours.setdefault(int(objects[i, k, 2]), []).append(int(k))
    last = {int(k): start[i, k] for k in present}  # last known positions
    vel = {int(k): np.zeros(2) for k in present}
    for t in range(t_len):
      lab = labels[i, t].ravel()
      is_obj = lab >= 0
      for c, ks in colours.items():
        sel = np.nonzero(lab == c)[0]
        if len(ks) == 1 or len(sel) == 0:
          groups = [sel] * len(ks) if len(ks) == 1 else [sel[:0]] * len(ks)
        else:
          which = _kmeans(coords[sel], np.stack([last[k] + vel[k]
                                                 for k in ks]))
          groups = [sel[which == j] for j in range(len(ks))]
        for k, g in zip(ks, groups):
          pixels[i, t, k] = len(g)
          if len(g) < min_pixels:
            last[k] = last[k] + vel[k]
            continue
          centre = coords[g].mean(0)
          if fit:
            mine = np.zeros(h * w, bool)
            mine[g] = True
            centre = fit_centre(objects[i, k, 1], objects[i, k, 3],
                                mine.reshape(h, w),
                                (is_obj & ~mine).reshape(h, w), centre,
                                resolution=h)
          found[i, t, k] = True
          pos[i, t, k] = centre
          if t > 0 and found[i, t - 1, k]:
            vel[k] = centre - pos[i, t - 1, k]
          last[k] = centre
  return dict(positions=pos, found=found, pixels=pixels)


def _infer_objects(videos, true_positions, context_frames, tolerance):
  """Colours of the present objects (slots with nonzero positions) by
  majority vote of palette pixels within 1.5 px of the true centre in the
  context frames; shape and size unknown (0)."""
  present = np.any(true_positions[:, 0] != 0, -1)
  n, _, h, w = videos.shape[:4]
  labels = palette_map(videos[:, :context_frames], tolerance)
  ys, xs = np.mgrid[0:h, 0:w] + 0.5
  objects = np.zeros(present.shape + (4,), np.int32)
  for i, k in zip(*np.nonzero(present)):
    votes = np.zeros(len(shapes.COLOUR_NAMES), np.int64)
    for t in range(context_frames):
      cx, cy = true_positions[i, t, k]
      near = (xs - cx) ** 2 + (ys - cy) ** 2 <= 1.5 ** 2
      lab = labels[i, t][near]
      votes += np.bincount(lab[lab >= 0], minlength=len(votes))
    objects[i, k] = (1, 0, int(votes.argmax()), 0)
  return objects, present


def true_visible(true_positions, objects, resolution: int) -> np.ndarray:
  """(N, T, K) visible pixel counts of each object when the true scene
  (objects at true_positions, z-order = slot order) is rendered."""
  n, t_len, k_max = true_positions.shape[:3]
  out = np.zeros((n, t_len, k_max), np.int64)
  for i in range(n):
    ks = np.nonzero(objects[i, :, 0] == 1)[0]
    for t in range(t_len):
      ids = np.zeros((resolution, resolution), np.int64)
      for k in ks:
        o = shapes.Obj(shape=int(objects[i, k, 1]),
                       colour=int(objects[i, k, 2]),
                       size=int(objects[i, k, 3]),
                       cx=float(true_positions[i, t, k, 0]),
                       cy=float(true_positions[i, t, k, 1]))
        ids[shapes.coverage(o, resolution)] = k + 1
      out[i, t] = np.bincount(ids.ravel(), minlength=k_max + 1)[1:]
  return out


def _summary(err_TxK: np.ndarray, mask: np.ndarray, name: str) -> dict:
  """<name>_error_px (mean over the masked object-frames) and
  <name>_by_frame_px (the mean per scored frame; None where none)."""
  by_frame = [float(err_TxK[:, j][mask[:, j]].mean()) if mask[:, j].any()
              else None for j in range(mask.shape[1])]
  return {f'{name}_error_px': float(err_TxK[mask].mean()),
          f'{name}_by_frame_px': by_frame}


def _baselines(true_positions, objects, context_frames, resolution,
               mask, know_sizes) -> dict:
  """Errors of the static / constant-velocity / bounce predictions."""
  k = context_frames
  p = np.asarray(true_positions, np.float64)
  future = p[:, k:]
  dt = np.arange(1, p.shape[1] - k + 1, dtype=np.float64)[None, :, None,
                                                          None]
  err = lambda pred: np.linalg.norm(pred - future, axis=-1)
  preds = dict(static=np.broadcast_to(p[:, k - 1:k], future.shape),
               constant_velocity=None, bounce=None)
  if k >= 2:
    v = (p[:, k - 1] - p[:, k - 2])[:, None]
    preds['constant_velocity'] = p[:, k - 1:k] + dt * v
    if know_sizes:
      r = np.asarray(shapes.SIZE_FRACTION)[objects[..., 3]] * resolution
      r = r[:, None, :, None]
      preds['bounce'] = shapes_motion.bounce(p[:, k - 1:k], v, dt, r,
                                             resolution - r)
  out = {}
  for name, pred in preds.items():
    out.update(_summary(err(pred), mask, name) if pred is not None else
               {f'{name}_error_px': None, f'{name}_by_frame_px': None})
  return out


def _tracked_errors(videos, tp, objects, k, know, min_pixels, penalty,
                    mask, name) -> dict:
  tr = track(videos, objects, tp[:, 0], fit=know, min_pixels=min_pixels)
  err = np.linalg.norm(tr['positions'][:, k:] - tp[:, k:], axis=-1)
  lost = ~tr['found'][:, k:]
  tracked = mask & ~lost
  out = _summary(np.where(lost, penalty, err), mask, name)
  out[f'{name}_tracked_px'] = (float(err[tracked].mean()) if tracked.any()
                               else None)
  out[f'{name}_lost_fraction'] = float(lost[mask].mean())
  return out


def physics_error(gen_videos, true_positions, *, context_frames: int,
                  objects=None, real_videos=None,
                  min_pixels: int = MIN_PIXELS,
                  lost_penalty_px: float | None = None) -> dict:
  """Tracked position error of generated continuations (module docstring).

  Args:
    gen_videos: uint8 (N, T, H, W, 3), frames 0..k-1 the given context
      (as given or as regenerated; they are not scored).
    true_positions: (N, T, K, 2) the true centres of the same clips
      (`real_clips(...)['positions']`).
    context_frames: k, 1 <= k < T.
    objects: (N, K, 4) of the same clips (`real_clips(...)['objects']`);
      recommended: gives exact colours, the true visibility, the shape fit
      of the tracker and the bounce baseline. Without it, the colours are
      read from the context frames at the true centres, the tracker uses
      plain centroids and every present object-frame is scored.
    real_videos: the real clips themselves (`real_clips(...)['video']`):
      adds the tracker's floor on them (`real_*` keys).
    min_pixels: an object with fewer pixels is lost (and, with `objects`,
      an object-frame with fewer visible pixels in truth is not scored).
    lost_penalty_px: error counted for a lost object (default: H / 2).
  Returns:
    dict with, for the generated clips, error_px (lost objects at
    lost_penalty_px), error_tracked_px (found ones only), lost_fraction,
    error_by_frame_px (list over frames k..T-1); the same four keys
    prefixed real_ (with real_videos: real_error_px, real_tracked_px,
    real_lost_fraction, real_by_frame_px); the baselines static_error_px,
    constant_velocity_error_px, bounce_error_px and their *_by_frame_px
    (None where undefined: constant velocity and bounce need k >= 2,
    bounce needs `objects`); num_scored, lost_penalty_px, context_frames.
  """
  videos = check_videos(gen_videos, name='generated videos')
  n, t_len, res = videos.shape[:3]
  tp = np.asarray(true_positions, np.float64)
  if tp.ndim != 4 or tp.shape[:2] != (n, t_len) or tp.shape[-1] != 2:
    raise validate.UserError(
        f'true_positions must be (N, T, K, 2) = ({n}, {t_len}, K, 2) for '
        f'these videos, got {tp.shape}.')
  if not 1 <= int(context_frames) < t_len:
    raise validate.UserError(
        f'context_frames={context_frames} is invalid: need 1 <= k < '
        f'{t_len} (the clip length) so that some frame is scored.')
  k = int(context_frames)
  if real_videos is not None:
    real_videos = check_videos(real_videos, name='real videos')
    if real_videos.shape != videos.shape:
      raise validate.UserError(
          f'real_videos must match the generated videos\' shape '
          f'{videos.shape}, got {real_videos.shape}.')
  know = objects is not None
  if know:
    objects = np.asarray(objects)
    if objects.shape != (n, tp.shape[2], 4):
      raise validate.UserError(
          f'objects must be (N, K, 4) = ({n}, {tp.shape[2]}, 4), got '
          f'{objects.shape}.')
    vis = true_visible(tp, objects, res) >= min_pixels
  else:
    # Colours from the real context when given (the generated context may
    # be regenerated), else from the generated clip's context frames.
    objects, present = _infer_objects(
        videos if real_videos is None else real_videos, tp, k,
        COLOUR_TOLERANCE)
    vis = np.broadcast_to(present[:, None], tp.shape[:3])
  penalty = res / 2 if lost_penalty_px is None else float(lost_penalty_px)
  mask = vis[:, k:] & (objects[:, None, :, 0] == 1)
  if not mask.any():
    raise validate.UserError('physics_error: no visible object in any '
                             'scored frame; nothing to measure.')
  args = (tp, objects, k, know, min_pixels, penalty, mask)
  g = _tracked_errors(videos, *args, name='error')
  out = dict(error_px=g['error_error_px'],
             error_tracked_px=g['error_tracked_px'],
             lost_fraction=g['error_lost_fraction'],
             error_by_frame_px=g['error_by_frame_px'])
  if real_videos is not None:
    out.update(_tracked_errors(real_videos, *args, name='real'))
  out.update(num_scored=int(mask.sum()), lost_penalty_px=penalty,
             context_frames=k)
  out.update(_baselines(tp, objects, k, res, mask, know))
  return out


@functools.lru_cache(maxsize=32)
def _physics_floor(n, resolution, num_frames, context_frames):
  c = real_clips('test', n, resolution=resolution, num_frames=num_frames)
  return physics_error(c['video'], c['positions'],
                       context_frames=context_frames, objects=c['objects'])


def physics_floor(n: int, *, resolution: int = 16, num_frames: int = 8,
                  context_frames: int = 2) -> dict:
  """`physics_error` of the first n real test clips against their own
  positions: the tracker's floor (with the baselines of those clips)."""
  return dict(_physics_floor(int(n), int(resolution), int(num_frames),
                             int(context_frames)))


# ----------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------


def degrade(videos: np.ndarray, how: str, *, context_frames: int = 2,
            seed: int = 0) -> np.ndarray:
  """Sanity variants of real clips: 'frozen' (frame k-1 repeated after the
  context), 'reversed' (time-reversed), 'shuffled' (frames permuted per
  clip)."""
  v = np.array(videos)
  if how == 'frozen':
    v[:, context_frames:] = v[:, context_frames - 1:context_frames]
  elif how == 'reversed':
    v = v[:, ::-1].copy()
  elif how == 'shuffled':
    rng = np.random.default_rng(seed)
    v = np.stack([c[rng.permutation(len(c))] for c in v])
  else:
    raise ValueError(f'Unknown degradation {how!r}.')
  return v


def floors(n: int = 500, *, resolution: int = 16, num_frames: int = 8,
           context_frames=(1, 2)) -> dict:
  """Everything `--floor` reports (see `main`)."""
  t0 = time.time()
  net = get_video_net()
  out = dict(video_net=dict(path=os.path.join(
      '$VISGEN_CACHE', 'feature_nets', os.path.basename(net.path) + '.npz'),
                            test_accuracy=net.meta['test_accuracy'],
                            train_seconds=net.meta['train_seconds'],
                            recipe=net.meta['recipe']),
             n=n, resolution=resolution, num_frames=num_frames)
  kw = dict(resolution=resolution, num_frames=num_frames)
  out['fvd_floor'] = fvd_floor(n, **kw)
  out['frame_fid_floor'] = frame_fid_floor(n, **kw)
  real = real_clips('test', n, **kw)
  train = real_clips('train', n, **kw)['video']
  out['sanity'] = {}
  for how in ('frozen', 'reversed', 'shuffled'):
    d = degrade(train, how)
    out['sanity'][how] = dict(fvd=fvd(d, real['video']),
                              frame_fid=frame_fid(d, real['video']))
  out['physics'] = {}
  for k in context_frames:
    row = dict(real=physics_floor(n, context_frames=k, **kw))
    for how in ('frozen', 'reversed'):
      row[how] = physics_error(degrade(real['video'], how, context_frames=k),
                               real['positions'], context_frames=k,
                               objects=real['objects'])
    out['physics'][f'context_{k}'] = row
  out['seconds'] = round(time.time() - t0, 1)
  out['load_average'] = os.getloadavg()
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(
      prog='python -m visgen.evaluators.video_metrics')
  parser.add_argument('--floor', action='store_true',
                      help='train/load the video net and report floors')
  parser.add_argument('--n', type=int, default=500,
                      help='clips per side of every floor')
  parser.add_argument('--resolution', type=int, default=16)
  parser.add_argument('--out', default=None, help='write the results JSON')
  args = parser.parse_args(argv)

  def run():
    if not args.floor:
      parser.print_help()
      return
    res = floors(args.n, resolution=args.resolution)
    print(json.dumps(res, indent=1))
    if args.out:
      os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
      with open(args.out, 'w') as f:
        json.dump(res, f, indent=1)

  raise SystemExit(validate.run_cli(run))


if __name__ == '__main__':
  main()
