r"""Bits per dimension from a continuous negative log-likelihood in nats.

Derivation. Pixels x in {0, ..., 255}^D; visgen's models see
y = x / 127.5 - 1 (`visgen.data.preprocess.to_float`). With uniform
dequantisation z = x + u, u ~ U[0, 1)^D, any continuous density p_Z gives a
discrete model P(x) = int_{[0,1)^D} p_Z(x + u) du and, by Jensen,
  -log P(x) <= E_u[-log p_Z(x + u)].
The model's density is over y = z / 127.5 - 1, so p_Z(z) = p_Y(y) / 127.5^D
and
  -log P(x) <= E_u[-log p_Y((x + u) / 127.5 - 1)] + D log 127.5.
In bits per dimension:
  bpd = (nll_nats / D + ln 127.5) / ln 2,
with nll_nats = -log p_Y in nats for the whole image (D = H * W * C values).
Sanity check: p_Y uniform on the dequantised range [-1, -1 + 256/127.5)^D
gives exactly 8 bits/dim (the uniform distribution over 256 levels).

Other conventions differ only in this offset: score_sde maps x to (x + u) /
256 in [0, 1] and adds 8 (for [-1, 1] data, 7), i.e. scale 128 instead of
127.5 (the 'offset hack' of score_sde_pytorch issue #51). `scale` selects it.

`bits_per_dim` is the wrapper for trained models: give it `nll_fn(y, key)`
returning -log p_Y(y) in nats per example (e.g. the probability-flow ODE of
`visgen.samplers.likelihood` with the model bound in), and uint8 test images.
"""

import jax
import jax.numpy as jnp
import numpy as np

from visgen.samplers import likelihood

DATA_SCALE = 127.5


def nats_to_bits_per_dim(*, nll_nats, num_dims: int,
                         scale: float = DATA_SCALE):
  """bpd of the dequantised discrete data from nats of y = z / scale - 1
  (the core's `likelihood.bits_per_dim` with one bin = 1 / scale)."""
  return likelihood.bits_per_dim(nll_nats, dim=num_dims, bin_width=1.0 / scale)


def dequantize(images_uint8, key, *, scale: float = DATA_SCALE):
  """y = (x + u) / scale - 1 with u ~ U[0, 1)^D."""
  u = jax.random.uniform(key, images_uint8.shape)
  return (jnp.asarray(images_uint8, jnp.float32) + u) / scale - 1.0


def bits_per_dim(nll_fn, images_uint8: np.ndarray, *, key,
                 batch_size: int = 256, scale: float = DATA_SCALE) -> float:
  """Mean bits/dim of uint8 NHWC images under `nll_fn` (nats per example).

  Each batch is dequantised with its own key; the result is the upper bound
  E_u[-log p] of the derivation above, averaged over images.
  """
  images = np.asarray(images_uint8)
  if images.dtype != np.uint8:
    raise ValueError(f'bits_per_dim takes uint8 images, got {images.dtype}.')
  num_dims = int(np.prod(images.shape[1:]))
  total = 0.0
  for i, s in enumerate(range(0, images.shape[0], batch_size)):
    k_deq, k_nll = jax.random.split(jax.random.fold_in(key, i))
    batch = images[s : s + batch_size]
    nll = nll_fn(dequantize(batch, k_deq, scale=scale), k_nll)
    total += float(jnp.sum(nats_to_bits_per_dim(
        nll_nats=nll, num_dims=num_dims, scale=scale)))
  return total / images.shape[0]
