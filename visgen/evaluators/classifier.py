"""Small NNX CNN used as a feature network for the embedded datasets.

Input: uint8 NHWC images of any size, converted to the network's fixed
`input_size` and channel count by `prepare` (bilinear `jax.image.resize`,
antialiased when shrinking; RGB -> grey is the channel mean, grey -> RGB is
repetition), scaled to [-1, 1] as x / 127.5 - 1. Three 3x3 convs (strides 1,
2, 2; the first may be 2) with GELU, global average pooling (plus max pooling
if asked), a dense `feature_dim` layer with GELU
(the *feature space* of digits-FID etc.), then a class head and an optional
multi-label attribute head.
"""

import flax.nnx as nnx
import jax
import jax.numpy as jnp


def prepare(images_NxHxWxC, *, input_size: int, channels: int):
  """uint8 NHWC (any size, 1 or 3 channels) -> float32 in [-1, 1]."""
  x = jnp.asarray(images_NxHxWxC, jnp.float32)
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(
        f'Expected NHWC images with 1 or 3 channels, got shape {x.shape}.'
    )
  if x.shape[-1] != channels:
    x = (jnp.mean(x, -1, keepdims=True) if channels == 1
         else jnp.repeat(x, channels, axis=-1))
  if x.shape[1:3] != (input_size, input_size):
    x = jax.image.resize(
        x, (x.shape[0], input_size, input_size, channels), 'bilinear'
    )
  return x / 127.5 - 1.0


class FeatureCNN(nnx.Module):
  """conv-conv-conv -> pool -> dense features -> class / attribute heads."""

  def __init__(self, *, channels: int, widths: tuple[int, ...],
               feature_dim: int, num_classes: int, num_attributes: int,
               first_stride: int = 1, max_pool: bool = False,
               rngs: nnx.Rngs):
    chans = (channels,) + tuple(widths)
    self.convs = nnx.List([
        nnx.Conv(chans[i], chans[i + 1], (3, 3),
                 strides=(first_stride if i == 0 else 2), rngs=rngs)
        for i in range(len(widths))
    ])
    # Max pooling answers "is X anywhere in the image" (scene attributes);
    # it is concatenated to the average pool.
    self.max_pool = max_pool
    pooled = widths[-1] * (2 if max_pool else 1)
    self.dense = nnx.Linear(pooled, feature_dim, rngs=rngs)
    self.head = nnx.Linear(feature_dim, num_classes, rngs=rngs)
    self.attr_head = (nnx.Linear(feature_dim, num_attributes, rngs=rngs)
                      if num_attributes else None)

  def __call__(self, x_NxHxWxC):
    h = x_NxHxWxC
    for conv in self.convs:
      h = jax.nn.gelu(conv(h))
    pooled = jnp.mean(h, axis=(1, 2))
    if self.max_pool:
      pooled = jnp.concatenate([pooled, jnp.max(h, axis=(1, 2))], -1)
    features = jax.nn.gelu(self.dense(pooled))
    out = dict(features=features, logits=self.head(features))
    if self.attr_head is not None:
      out['attr_logits'] = self.attr_head(features)
    return out
