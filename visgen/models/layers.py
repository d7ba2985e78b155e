"""Shared building blocks for the visgen networks (Flax NNX).

All parameters are created in float32 and carry logical axis names as
`out_sharding` metadata (with eager sharding off, so no mesh is needed at
construction); `visgen.models.functional.logical_axes` reads them back.

Matmuls take a compute dtype: with bfloat16 the operands are cast to bf16 and
accumulated in float32 (`preferred_element_type`), because on the target CPUs
bf16 x bf16 -> bf16 is slower than fp32 while bf16 with fp32 accumulation runs
at about twice the fp32 rate (environment.md §4).
"""

import contextlib
import dataclasses
import functools
import math
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

Axes = tuple[str | None, ...]


@dataclasses.dataclass(frozen=True)
class Init:
  """A parameter initializer: 'zeros', 'ones', 'normal' or 'xavier_uniform'.

  Eager construction draws on the host with numpy (seeded from the JAX key):
  an eager `jax.random` init compiles one XLA program per distinct shape
  (~0.3 s each on the 2-core CPUs, ~10 s for a small U-Net). Under a trace
  (`jax.jit` / `nnx.eval_shape`, e.g. for sharded state creation) it uses
  `jax.random`, so large models are never baked in as constants. The two
  paths draw from the same distribution but not the same values.
  """
  kind: str
  std: float = 0.02

  def __call__(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    if self.kind in ('zeros', 'ones'):
      fill = np.float32(self.kind == 'ones')
      if isinstance(key, jax.core.Tracer):
        return jnp.full(shape, fill, jnp.float32)
      return jnp.asarray(np.full(shape, fill, np.float32))
    # Fans as in jax.nn.initializers: HWIO kernels count the receptive field.
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    fan_in = shape[-2] * receptive if len(shape) > 1 else shape[-1]
    fan_out = shape[-1] * receptive
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    if isinstance(key, jax.core.Tracer):
      if self.kind == 'normal':
        return self.std * jax.random.normal(key, shape, jnp.float32)
      return jax.random.uniform(key, shape, jnp.float32, -limit, limit)
    seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
    rng = np.random.default_rng(seed)
    if self.kind == 'normal':
      value = self.std * rng.standard_normal(shape, dtype=np.float32)
    else:
      value = rng.uniform(-limit, limit, shape).astype(np.float32)
    return jnp.asarray(value)


xavier_uniform = Init('xavier_uniform')
zeros = Init('zeros')
ones = Init('ones')
normal = Init('normal', 0.02)


def make_param(key: jax.Array, init: Init, shape: tuple[int, ...],
               axes: Axes) -> nnx.Param:
  """An fp32 parameter annotated with logical axis names."""
  if len(axes) != len(shape):
    raise ValueError(f'axes {axes} do not match shape {shape}.')
  return nnx.Param(init(key, tuple(shape)), out_sharding=tuple(axes),
                   eager_sharding=False)


def _dims(nd: int, ta: bool, tb: bool):
  """dot_general dimension numbers for op(a) @ op(b) over leading batch."""
  batch = tuple(range(nd - 2))
  return (((nd - 2 if ta else nd - 1,), (nd - 1 if tb else nd - 2,)),
          (batch, batch))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def bmm(a: jax.Array, b: jax.Array, dtype: Any = jnp.float32,
        ta: bool = False, tb: bool = False) -> jax.Array:
  """op(a) @ op(b) (op = transpose of the last two axes when ta / tb), with
  shared leading batch axes, operands in `dtype`, accumulated and returned
  in float32.

  The custom gradient keeps every backward matmul in the same form (bf16
  operands, float32 accumulation and output). JAX's own transpose rule
  multiplies the float32 cotangent by the bf16 operand (a mixed dot that XLA
  runs in fp32) and rounds the weight gradient to bf16; here gradients come
  back in the inputs' dtypes, unrounded.
  """
  return jax.lax.dot_general(a.astype(dtype), b.astype(dtype),
                             _dims(a.ndim, ta, tb),
                             preferred_element_type=jnp.float32)


def _bmm_fwd(a, b, dtype, ta, tb):
  a_c, b_c = a.astype(dtype), b.astype(dtype)
  out = jax.lax.dot_general(a_c, b_c, _dims(a.ndim, ta, tb),
                            preferred_element_type=jnp.float32)
  # Residuals in the compute dtype: half the memory for bf16. The dtype
  # tokens carry the input dtypes (a static dtype is not a valid residual).
  return out, (a_c, b_c, jnp.zeros((), a.dtype), jnp.zeros((), b.dtype))


def _bmm_bwd(dtype, ta, tb, res, g):
  a, b, a_tok, b_tok = res
  # Products that contract the row axis of their left operand (ta=True:
  # weight gradients x^T g, attention's p^T g) run in XLA's generic dot on
  # CPU, where bf16 is about half as fast as fp32; they take fp32 operands
  # (the bf16 residuals are exact in fp32), the others bf16.
  f32, gc = jnp.float32, g.astype(dtype)
  if not ta and not tb:    # C = A B
    da, db = bmm(gc, b, dtype, False, True), bmm(a, g, f32, True, False)
  elif not ta and tb:      # C = A B^T
    da, db = bmm(gc, b, dtype, False, False), bmm(g, a, f32, True, False)
  elif ta and not tb:      # C = A^T B
    da, db = bmm(b, gc, dtype, False, True), bmm(a, gc, dtype, False, False)
  else:                    # C = A^T B^T
    da, db = bmm(b, g, f32, True, True), bmm(g, a, f32, True, True)
  return da.astype(a_tok.dtype), db.astype(b_tok.dtype)


bmm.defvjp(_bmm_fwd, _bmm_bwd)


def matmul(x: jax.Array, w: jax.Array, dtype: Any) -> jax.Array:
  """x @ w over the last axis of x in `dtype`, accumulated in float32.

  Leading axes of x are flattened into one (a free reshape), so the weight
  gradient is a single (K, M) @ (M, N) matmul.
  """
  lead = x.shape[:-1]
  y = bmm(x.reshape(-1, x.shape[-1]), w, dtype)
  return y.reshape(lead + (w.shape[-1],))


class Dense(nnx.Module):
  """A linear layer whose output is float32 whatever the compute dtype."""

  def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs,
               axes: Axes = (None, None), use_bias: bool = True,
               kernel_init: Init = xavier_uniform, dtype: Any = jnp.float32):
    self.kernel = make_param(rngs.params(), kernel_init, (din, dout), axes)
    self.bias = (make_param(rngs.params(), zeros, (dout,), axes[1:])
                 if use_bias else None)
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    y = matmul(x, self.kernel[...], self.dtype)
    if self.bias is not None:
      y = y + self.bias[...]
    return y


def layer_norm(x: jax.Array, *, eps: float = 1e-6) -> jax.Array:
  """LayerNorm without affine parameters, statistics in float32."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  # E[x^2] - mean^2 needs one fused pass over x instead of two.
  var = jnp.mean(jnp.square(x), axis=-1, keepdims=True) - jnp.square(mean)
  return (x - mean) * jax.lax.rsqrt(jnp.maximum(var, 0.0) + eps)


def timestep_embedding(t_B: jax.Array, *, dim: int,
                       max_period: float = 10000.0,
                       freq_shift: float = 0.0) -> jax.Array:
  """Sinusoidal embedding [cos, sin] of (scaled) times, shape (B, dim).

  Frequencies max_period^(-i / (half - freq_shift)), i < half = dim // 2:
  freq_shift=0 is DiT / ADM, 1 is diffusers' `downscale_freq_shift=1`
  (its DiT and PixArt ports)."""
  half = dim // 2
  freqs = np.exp(-math.log(max_period) * np.arange(half) /
                 (half - freq_shift))
  args = t_B.astype(jnp.float32)[:, None] * jnp.asarray(freqs, jnp.float32)
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class TimestepEmbedder(nnx.Module):
  """t in [0, 1] -> t * t_scale -> sinusoid -> MLP (as in DiT / ADM)."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs, freq_dim: int = 256,
               t_scale: float = 1000.0, dtype: Any = jnp.float32,
               freq_shift: float = 0.0):
    init = normal
    self.freq_shift = freq_shift
    self.fc1 = Dense(freq_dim, dim, rngs=rngs, axes=(None, 'embed'),
                     kernel_init=init, dtype=dtype)
    self.fc2 = Dense(dim, dim, rngs=rngs, axes=('embed', None),
                     kernel_init=init, dtype=dtype)
    self.freq_dim = freq_dim
    self.t_scale = t_scale

  def __call__(self, t_B: jax.Array) -> jax.Array:
    emb = timestep_embedding(t_B * self.t_scale, dim=self.freq_dim,
                             freq_shift=self.freq_shift)
    return self.fc2(jax.nn.silu(self.fc1(emb)))


class LabelEmbedder(nnx.Module):
  """Class table with num_classes + 1 rows; row num_classes is the null class.

  Classifier-free label dropout is the training task's job: it replaces a
  sample's label by `num_classes` before the model sees it.
  """

  def __init__(self, num_classes: int, dim: int, *, rngs: nnx.Rngs):
    self.table = make_param(rngs.params(), normal,
                            (num_classes + 1, dim), ('vocab', 'embed'))
    self.num_classes = num_classes

  def __call__(self, label_B: jax.Array) -> jax.Array:
    return jnp.take(self.table[...], label_B.astype(jnp.int32), axis=0)


_FEATURES: list[dict] = []  # a stack of open `capture_features()` dicts


@contextlib.contextmanager
def capture_features():
  """Collects named intermediate activations (`record_feature`) of every
  model call made while open, e.g. for representation probes:

    with layers.capture_features() as feats:
      apply(params, x_t, t, cond)     # eager or inside jax.jit
    # feats: {'block0': (B, N, D), ...} (DiT), {'down0': (B, H, W, C),
    #         ..., 'mid': ..., 'up0': ...} (U-Net), {'block0': (B, W)} (MLP)

  Parameters and outputs are unchanged; build remat models without remat
  to capture (one trace)."""
  feats: dict = {}
  _FEATURES.append(feats)
  try:
    yield feats
  finally:
    _FEATURES.remove(feats)


def record_feature(name: str, x: jax.Array) -> None:
  """Records x under `name` when a `capture_features()` is open."""
  if _FEATURES:
    _FEATURES[-1][name] = x


def check_cond(cond: dict | None, keys: tuple[str, ...], model: str) -> dict:
  """Returns cond, raising a clear error when a consumed key is missing."""
  cond = {} if cond is None else cond
  missing = [k for k in keys if k not in cond]
  if missing:
    raise ValueError(
        f'{model} consumes cond keys {list(keys)} but {missing} are missing '
        f'(got {sorted(cond)}). Pass them, or build the model with '
        'num_classes=0 for an unconditional model.')
  return cond
