"""A noise-aware classifier network p_phi(y | x_t, t) (ADM's classifier).

Dhariwal & Nichol (2021) guide a diffusion model with the gradient of a
classifier trained on noisy inputs x_t of the *same* forward process; the
classifier must see t because p(y | x_t) sharpens as the noise falls. Two
architectures behind the models' functional boundary
(`apply(params, x_t, t, cond) -> logits (B, num_classes)`):

* 'conv': the ADM encoder recipe in miniature (`EncoderUNetModel`): a stem
  conv, per level one time-conditioned residual block (the U-Net's scale-shift
  `ResBlock`) and a stride-2 conv, then GroupNorm-SiLU, global average pool
  and a linear head.
* 'mlp': residual MLP blocks with the time embedding added (the MLP
  denoiser's `MLPBlock`), for flattened data; also the clean-data
  discriminative baseline of `experiments.diffusion_classifier`.

Inputs may be flattened (B, prod(x_shape)) like the quickstart's MLP data or
images (B, H, W, C); `x_shape` says how to read them. Registered as model
'noisy_classifier' in `visgen.models`; trained by the task of the same name
(`visgen.tasks.noisy_classifier`).
"""

from typing import Any
from typing import Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from visgen.models import layers
from visgen.models import mlp
from visgen.models import unet


class NoisyClassifier(nnx.Module):
  """(x_t, t (B,), cond) -> logits (B, num_classes); cond is ignored."""

  def __init__(self, *, num_classes: int, x_shape: Sequence[int],
               rngs: nnx.Rngs, arch: str = 'conv',
               widths: Sequence[int] = (32, 64), width: int = 256,
               depth: int = 3, emb_dim: int = 128, t_scale: float = 1000.0,
               dtype: Any = jnp.float32):
    if arch not in ('conv', 'mlp'):
      raise ValueError(f"Unknown classifier arch {arch!r}. Valid choices: "
                       "conv, mlp.")
    if num_classes < 2:
      raise ValueError(f'num_classes must be >= 2, got {num_classes}.')
    self.x_shape = tuple(int(s) for s in x_shape)
    if arch == 'conv' and len(self.x_shape) != 3:
      raise ValueError(f"arch='conv' needs x_shape (H, W, C), got "
                       f"{self.x_shape}; use arch='mlp' for vectors.")
    self.arch = arch
    self.num_classes = num_classes
    self.cond_keys = ()
    dim = int(np.prod(self.x_shape))
    if arch == 'conv':
      self.t_embed = layers.TimestepEmbedder(emb_dim, rngs=rngs,
                                             t_scale=t_scale, dtype=dtype)
      chans = (widths[0],) + tuple(widths)
      self.stem = unet.Conv(self.x_shape[-1], widths[0], rngs=rngs,
                            dtype=dtype)
      self.blocks = nnx.List([
          unet.ResBlock(chans[i], chans[i + 1], emb_dim, rngs=rngs,
                        dtype=dtype) for i in range(len(widths))])
      self.downs = nnx.List([
          unet.Conv(chans[i + 1], chans[i + 1], rngs=rngs, stride=2,
                    dtype=dtype) for i in range(len(widths) - 1)])
      self.norm = unet.GroupNorm(widths[-1], rngs=rngs)
      self.head = layers.Dense(widths[-1], num_classes, rngs=rngs,
                               axes=('embed', None), dtype=dtype)
    else:
      self.t_embed = layers.TimestepEmbedder(width, rngs=rngs,
                                             t_scale=t_scale, dtype=dtype)
      self.inp = layers.Dense(dim, width, rngs=rngs, axes=(None, 'embed'),
                              dtype=dtype)
      self.mlp_blocks = nnx.List(
          [mlp.MLPBlock(width, rngs=rngs, dtype=dtype) for _ in range(depth)])
      self.head = layers.Dense(width, num_classes, rngs=rngs,
                               axes=('embed', None), dtype=dtype)

  def __call__(self, x_t: jax.Array, t: jax.Array, cond: dict | None = None,
               *, train: bool = False, rngs: nnx.Rngs | None = None
               ) -> jax.Array:
    del cond  # p(y | x_t): the label is the output, never an input.
    b = x_t.shape[0]
    if int(np.prod(x_t.shape[1:])) != int(np.prod(self.x_shape)):
      raise ValueError(f'NoisyClassifier expects x_t of shape (B, '
                       f'{self.x_shape}) or flattened, got {x_t.shape}.')
    t_b = jnp.broadcast_to(t, (b,))
    emb = self.t_embed(t_b)
    if self.arch == 'mlp':
      h = self.inp(x_t.reshape(b, -1))
      for block in self.mlp_blocks:
        h = block(h, emb)
      return self.head(jax.nn.silu(h))
    h = self.stem(x_t.reshape((b,) + self.x_shape))
    for i, block in enumerate(self.blocks):
      h = block(h, emb, train=train, rngs=rngs)
      if i < len(self.downs):
        h = self.downs[i](h)
    h = jax.nn.silu(self.norm(h))
    return self.head(jnp.mean(h, axis=(1, 2)))
