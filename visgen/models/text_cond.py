"""Text conditioning shared by the text-conditioned denoisers.

A denoiser reads text from `cond` in one of two forms:

  embeddings (a frozen encoder ran in the task, `visgen.tasks.text_to_image`):
    cond['text']         (B, L, text_dim) token embeddings
    cond['text_mask']    (B, L) bool, True on real tokens
    cond['text_pooled']  (B, pooled_dim) pooled vector (when pooled_dim > 0)
  tokens (a trainable encoder inside the denoiser, `text_encoder=dict(...)`):
    cond['text_tokens']  (B, L) int token ids
    cond['text_mask']    (B, L) bool

and optionally cond['text_null'] (B,) bool: where True the sample's text is
replaced by the learned null text (one learned token, mask [1, 0, ..., 0],
and a learned pooled vector) -- caption dropout to a learned null embedding
(PixArt-alpha's `y_embedding`), and the unconditional half of
classifier-free guidance. Padding never reaches the image: every attention
to text masks the padding keys, and pooling is over real tokens.
"""

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from visgen.models import layers
from visgen.models import text_encoders


class PooledEmbedder(nnx.Module):
  """Linear-SiLU-Linear (SD3's pooled-text projection) to the time width."""

  def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs,
               dtype: Any = jnp.float32):
    self.fc1 = layers.Dense(din, dout, rngs=rngs, axes=(None, 'embed'),
                            dtype=dtype)
    self.fc2 = layers.Dense(dout, dout, rngs=rngs, axes=('embed', None),
                            dtype=dtype)

  def __call__(self, x):
    return self.fc2(jax.nn.silu(self.fc1(x)))


class TextInput(nnx.Module):
  """cond -> (text (B, L, text_dim), mask (B, L), pooled (B, P) or None).

  Args:
    text_dim: width of cond['text'] (ignored with `text_encoder`).
    pooled_dim: width of cond['text_pooled']; 0: no pooled input.
    text_encoder: None, or a trainable encoder's config dict(name=...,
      **kwargs) of `text_encoders.ENCODERS` (e.g. 'scene_text'): the model
      then reads token ids and trains the encoder with the denoiser; its
      mean-pooled output is the pooled vector (with pooled_dim > 0).
  """

  def __init__(self, *, rngs: nnx.Rngs, text_dim: int = 0,
               pooled_dim: int = 0, text_encoder: dict | None = None,
               dtype: Any = jnp.float32):
    encoder = None
    if text_encoder:
      kw = dict(text_encoder)
      name = kw.pop('name', 'scene_text')
      if name not in text_encoders.ENCODERS:
        raise ValueError(f'Unknown text_encoder {name!r}; valid: '
                         f'{", ".join(text_encoders.ENCODERS)}.')
      encoder = text_encoders.ENCODERS[name](rngs=rngs, dtype=dtype, **kw)
    self.encoder = encoder
    if encoder is not None:
      text_dim = self.encoder.out_dim
      pooled_dim = self.encoder.pooled_dim if pooled_dim else 0
    if text_dim <= 0:
      raise ValueError('A text-conditioned model needs text_dim (the width '
                       "of cond['text']) or text_encoder=dict(name=...).")
    self.text_dim, self.pooled_dim = text_dim, pooled_dim
    self.null_text = layers.make_param(rngs.params(), layers.normal,
                                       (text_dim,), ('embed',))
    self.null_pooled = (layers.make_param(rngs.params(), layers.normal,
                                          (pooled_dim,), ('embed',))
                        if pooled_dim else None)
    self.cond_keys = (('text_tokens', 'text_mask') if self.encoder else (
        ('text', 'text_mask') + (('text_pooled',) if pooled_dim else ())))

  def __call__(self, cond: dict):
    mask = jnp.asarray(cond['text_mask']).astype(bool)
    if self.encoder is not None:
      text, pooled = self.encoder(cond['text_tokens'], mask)
    else:
      text = jnp.asarray(cond['text']).astype(jnp.float32)
      pooled = cond.get('text_pooled')
      if text.ndim != 3 or text.shape[-1] != self.text_dim:
        raise ValueError(f"cond['text'] must be (B, L, {self.text_dim}) "
                         f'token embeddings, got {text.shape}.')
      if text.shape[:2] != mask.shape:
        raise ValueError(f"cond['text_mask'] {mask.shape} does not match "
                         f"cond['text'] {text.shape}.")
    if not self.pooled_dim:
      pooled = None
    elif pooled is None:
      raise ValueError("The model reads cond['text_pooled'] (pooled_dim="
                       f'{self.pooled_dim}); pass it or use pooled_dim=0.')
    null = cond.get('text_null')
    if null is not None:
      null = jnp.asarray(null).astype(bool)
      b, n = mask.shape
      first = jnp.arange(n) == 0
      null_seq = jnp.where(first[:, None], self.null_text[...], 0.0)
      text = jnp.where(null[:, None, None], null_seq[None], text)
      mask = jnp.where(null[:, None], first[None], mask)
      if pooled is not None:
        pooled = jnp.where(null[:, None], self.null_pooled[...],
                           jnp.asarray(pooled, jnp.float32))
    return text, mask, pooled
