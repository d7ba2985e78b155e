"""Text encoders: BERT / MiniLM, CLIP's text tower, a small scene encoder.

One transformer (`TextTransformer`) covers the three families; they differ
only in where the LayerNorms sit, the activation, the mask and the pooling:

  family       norms                       act         mask     pooled
  BERT/MiniLM  post-LN (+ embedding LN)    GELU (erf)  padding  masked mean
  CLIP text    pre-LN + final LN           quick GELU  causal   EOS token
  scene_text   pre-LN + final LN           GELU        padding  masked mean

`__call__(tokens (B, L) int, mask (B, L) bool) -> (tokens_BxLxD, pooled_BxD)`.

* `BertText` (Devlin et al. 2019) with the sizes of all-MiniLM-L6-v2 (Wang
  et al. 2020, "MiniLM"; sentence-transformers): word + position + token
  type embeddings, LayerNorm, 6 post-LN layers (12 heads, width 384, MLP
  1536). The pooled vector is sentence-transformers' mean over the real
  tokens, L2-normalised (`normalize=True`, its `Normalize` module). Weights:
  HF `BertModel` safetensors through the converter `hf_bert`
  (`convert_hf_bert`); tokens from `visgen.data.hf_tokenize`.
* `CLIPText` (Radford et al. 2021; transformers' `CLIPTextModel`): token +
  position embeddings, pre-LN layers under a causal mask, quick GELU
  x sigmoid(1.702 x), a final LayerNorm; pooled = the hidden state at the
  EOS token (the first `eos_token_id`, or the argmax id as in the original
  CLIP when eos_token_id is None), optionally through the bias-free
  `text_projection` (`proj_dim`, CLIPTextModelWithProjection). Converter
  `hf_clip_text` (`convert_hf_clip_text`).
* `SceneText`: a small trainable pre-LN encoder over the scene grammar's
  word vocabulary (`visgen.data.tokenize.scene_vocabulary`); used inside a
  text-conditioned denoiser (`visgen.models.text_cond`) and trained with it.

Padding keys are masked out of attention with a large finite negative (a row
with no real key attends uniformly instead of producing NaN), so outputs at
real positions do not depend on what padding holds.
"""

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from visgen.models import layers

_NEG = -1e30  # Finite: an all-padding row gives uniform weights, not NaN.
ACTS = {
    'gelu': lambda x: jax.nn.gelu(x, approximate=False),
    'gelu_tanh': lambda x: jax.nn.gelu(x, approximate=True),
    'quick_gelu': lambda x: x * jax.nn.sigmoid(1.702 * x),
}


class LayerNorm(nnx.Module):
  """LayerNorm with scale and bias (fp32 statistics), eps configurable."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs, eps: float = 1e-5):
    key = rngs.params()
    self.scale = layers.make_param(key, layers.ones, (dim,), ('embed',))
    self.bias = layers.make_param(key, layers.zeros, (dim,), ('embed',))
    self.eps = eps

  def __call__(self, x):
    return layers.layer_norm(x, eps=self.eps) * self.scale[...] + (
        self.bias[...])


def masked_attention(q, k, v, *, key_mask=None, causal: bool = False,
                     dtype=jnp.float32):
  """Softmax attention. q (B, H, Lq, Dh), k/v (B, H, Lk, Dh); key_mask
  (B, Lk) bool (True: attend); causal: query i sees keys j <= i."""
  logits = layers.bmm(q * q.shape[-1] ** -0.5, k, dtype, False, True)
  allowed = None
  if key_mask is not None:
    allowed = key_mask[:, None, None, :].astype(bool)
  if causal:
    lq, lk = q.shape[2], k.shape[2]
    tri = jnp.tril(jnp.ones((lq, lk), bool))[None, None]
    allowed = tri if allowed is None else allowed & tri
  if allowed is not None:
    logits = jnp.where(allowed, logits, _NEG)
  probs = jax.nn.softmax(logits, axis=-1)
  return layers.bmm(probs, v, dtype)


class Attention(nnx.Module):
  """Multi-head attention with separate q, k, v, out projections (the
  layout of BERT / CLIP checkpoints); cross-attention when `context` is
  given (k, v from context of width `context_dim`)."""

  def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs,
               context_dim: int | None = None, dtype: Any = jnp.float32,
               zero_out: bool = False):
    if width % heads:
      raise ValueError(f'width {width} is not divisible by heads {heads}.')
    cdim = context_dim or width
    self.q = layers.Dense(width, width, rngs=rngs, axes=('embed', 'heads'),
                          dtype=dtype)
    self.k = layers.Dense(cdim, width, rngs=rngs, axes=('embed', 'heads'),
                          dtype=dtype)
    self.v = layers.Dense(cdim, width, rngs=rngs, axes=('embed', 'heads'),
                          dtype=dtype)
    self.out = layers.Dense(
        width, width, rngs=rngs, axes=('heads', 'embed'), dtype=dtype,
        kernel_init=layers.zeros if zero_out else layers.xavier_uniform)
    self.heads = heads
    self.dtype = dtype

  def split(self, x):
    b, n, d = x.shape
    return x.reshape(b, n, self.heads, d // self.heads).transpose(0, 2, 1, 3)

  def __call__(self, x, *, context=None, key_mask=None, causal=False):
    ctx = x if context is None else context
    q, k, v = self.split(self.q(x)), self.split(self.k(ctx)), self.split(
        self.v(ctx))
    out = masked_attention(q, k, v, key_mask=key_mask, causal=causal,
                           dtype=self.dtype)
    b, _, n, _ = out.shape
    return self.out(out.transpose(0, 2, 1, 3).reshape(b, n, -1))


class Layer(nnx.Module):
  """A transformer layer, post-LN (BERT) or pre-LN (CLIP, scene_text)."""

  def __init__(self, width: int, heads: int, mlp_dim: int, *,
               rngs: nnx.Rngs, post_ln: bool, act: str, eps: float,
               dtype: Any = jnp.float32):
    self.attn = Attention(width, heads, rngs=rngs, dtype=dtype)
    self.norm1 = LayerNorm(width, rngs=rngs, eps=eps)
    self.fc1 = layers.Dense(width, mlp_dim, rngs=rngs, axes=('embed', 'mlp'),
                            dtype=dtype)
    self.fc2 = layers.Dense(mlp_dim, width, rngs=rngs, axes=('mlp', 'embed'),
                            dtype=dtype)
    self.norm2 = LayerNorm(width, rngs=rngs, eps=eps)
    self.post_ln = post_ln
    self.act = ACTS[act]

  def __call__(self, x, *, key_mask, causal):
    if self.post_ln:  # BERT: x = LN(x + Attn(x)); x = LN(x + MLP(x)).
      x = self.norm1(x + self.attn(x, key_mask=key_mask, causal=causal))
      return self.norm2(x + self.fc2(self.act(self.fc1(x))))
    x = x + self.attn(self.norm1(x), key_mask=key_mask, causal=causal)
    return x + self.fc2(self.act(self.fc1(self.norm2(x))))


def mean_pool(h_BxLxD, mask_BxL):
  """Mean of the real tokens (sentence-transformers' mean pooling)."""
  m = mask_BxL.astype(jnp.float32)[..., None]
  return jnp.sum(h_BxLxD * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)


class TextTransformer(nnx.Module):
  """(tokens (B, L), mask (B, L)) -> (tokens (B, L, D), pooled (B, D'))."""

  def __init__(self, *, rngs: nnx.Rngs, vocab_size: int, width: int,
               depth: int, heads: int, mlp_dim: int, max_len: int,
               type_vocab_size: int = 0, post_ln: bool = False,
               act: str = 'gelu', causal: bool = False,
               pooling: str = 'mean', normalize: bool = False,
               eps: float = 1e-5, proj_dim: int = 0,
               eos_token_id: int | None = None, dtype: Any = jnp.float32):
    if act not in ACTS:
      raise ValueError(f'Unknown activation {act!r}; valid: '
                       f'{", ".join(ACTS)}.')
    if pooling not in ('mean', 'eos'):
      raise ValueError(f"pooling must be 'mean' or 'eos', got {pooling!r}.")
    table = lambda n: layers.make_param(rngs.params(), layers.normal,
                                        (n, width), ('vocab', 'embed'))
    self.token_embed = table(vocab_size)
    self.pos_embed = table(max_len)
    self.type_embed = table(type_vocab_size) if type_vocab_size else None
    # BERT normalises the summed embeddings; pre-LN models the output.
    self.embed_norm = LayerNorm(width, rngs=rngs, eps=eps) if post_ln else None
    self.layers = nnx.List([
        Layer(width, heads, mlp_dim, rngs=rngs, post_ln=post_ln, act=act,
              eps=eps, dtype=dtype) for _ in range(depth)])
    self.final_norm = None if post_ln else LayerNorm(width, rngs=rngs,
                                                     eps=eps)
    self.proj = (layers.Dense(width, proj_dim, rngs=rngs, use_bias=False,
                              axes=('embed', None), dtype=dtype)
                 if proj_dim else None)
    self.vocab_size, self.max_len, self.width = vocab_size, max_len, width
    self.out_dim = width
    self.pooled_dim = proj_dim or width
    self.causal, self.pooling, self.normalize = causal, pooling, normalize
    self.eos_token_id = eos_token_id

  def __call__(self, tokens, mask=None, token_types=None):
    tokens = jnp.asarray(tokens).astype(jnp.int32)
    b, n = tokens.shape
    if n > self.max_len:
      raise ValueError(f'Text of {n} tokens is longer than the encoder '
                       f'max_len {self.max_len}; shorten the tokenizer '
                       'max_len.')
    mask = jnp.ones((b, n), bool) if mask is None else jnp.asarray(
        mask).astype(bool)
    x = jnp.take(self.token_embed[...], tokens, axis=0)
    x = x + self.pos_embed[...][:n]
    if self.type_embed is not None:
      types = (jnp.zeros_like(tokens) if token_types is None else
               jnp.asarray(token_types).astype(jnp.int32))
      x = x + jnp.take(self.type_embed[...], types, axis=0)
    if self.embed_norm is not None:
      x = self.embed_norm(x)
    for layer in self.layers:
      x = layer(x, key_mask=mask, causal=self.causal)
    if self.final_norm is not None:
      x = self.final_norm(x)
    if self.pooling == 'mean':
      pooled = mean_pool(x, mask)
    else:
      if self.eos_token_id is None:  # Original CLIP: EOS has the top id.
        idx = jnp.argmax(tokens, axis=-1)
      else:
        idx = jnp.argmax(tokens == self.eos_token_id, axis=-1)
      pooled = jnp.take_along_axis(x, idx[:, None, None], axis=1)[:, 0]
    if self.proj is not None:
      pooled = self.proj(pooled)
    if self.normalize:
      pooled = pooled / jnp.maximum(
          jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
    return x, pooled


class BertText(TextTransformer):
  """BERT; defaults: all-MiniLM-L6-v2 (see the module docstring)."""

  def __init__(self, *, rngs: nnx.Rngs, vocab_size: int = 30522,
               width: int = 384, depth: int = 6, heads: int = 12,
               mlp_dim: int = 1536, max_len: int = 512,
               type_vocab_size: int = 2, normalize: bool = True,
               eps: float = 1e-12, dtype: Any = jnp.float32):
    super().__init__(rngs=rngs, vocab_size=vocab_size, width=width,
                     depth=depth, heads=heads, mlp_dim=mlp_dim,
                     max_len=max_len, type_vocab_size=type_vocab_size,
                     post_ln=True, act='gelu', causal=False, pooling='mean',
                     normalize=normalize, eps=eps, dtype=dtype)


class CLIPText(TextTransformer):
  """CLIPTextModel; defaults: CLIP ViT-L/14's text tower (SD 1.x)."""

  def __init__(self, *, rngs: nnx.Rngs, vocab_size: int = 49408,
               width: int = 768, depth: int = 12, heads: int = 12,
               mlp_dim: int = 3072, max_len: int = 77, act: str = 'quick_gelu',
               eps: float = 1e-5, proj_dim: int = 0,
               eos_token_id: int | None = None, dtype: Any = jnp.float32):
    super().__init__(rngs=rngs, vocab_size=vocab_size, width=width,
                     depth=depth, heads=heads, mlp_dim=mlp_dim,
                     max_len=max_len, post_ln=False, act=act, causal=True,
                     pooling='eos', eps=eps, proj_dim=proj_dim,
                     eos_token_id=eos_token_id, dtype=dtype)


def scene_vocab_size() -> int:
  from visgen.data import tokenize  # pylint: disable=g-import-not-at-top
  return len(tokenize.scene_vocabulary()) + 1  # + padding id 0


class SceneText(TextTransformer):
  """A small trainable encoder for the scene grammar (`scene_words` ids)."""

  def __init__(self, *, rngs: nnx.Rngs, vocab_size: int | None = None,
               width: int = 128, depth: int = 2, heads: int = 4,
               mlp_dim: int | None = None, max_len: int = 24,
               dtype: Any = jnp.float32):
    super().__init__(rngs=rngs, vocab_size=vocab_size or scene_vocab_size(),
                     width=width, depth=depth, heads=heads,
                     mlp_dim=mlp_dim or 4 * width, max_len=max_len,
                     post_ln=False, act='gelu', causal=False,
                     pooling='mean', dtype=dtype)


ENCODERS = {'bert_text': BertText, 'clip_text': CLIPText,
            'scene_text': SceneText}


# ----------------------------------------------------------------------------
# Converters: HF (transformers) state-dict names -> parameter paths.
# torch Linear weights are (out, in); visgen kernels are (in, out).
# ----------------------------------------------------------------------------


def _layer_map(src: str, dst: str, names: dict[str, str]) -> dict:
  """{hf name: (path, transpose)} for one layer's Linear / LayerNorm."""
  out = {}
  for hf, ours in names.items():
    if ours.endswith(('norm1', 'norm2')):
      out[f'{src}.{hf}.weight'] = (f'{dst}/{ours}/scale', False)
      out[f'{src}.{hf}.bias'] = (f'{dst}/{ours}/bias', False)
    else:
      out[f'{src}.{hf}.weight'] = (f'{dst}/{ours}/kernel', True)
      out[f'{src}.{hf}.bias'] = (f'{dst}/{ours}/bias', False)
  return out


def _apply_map(arrays: dict[str, np.ndarray], table: dict, *, ignore,
               what: str) -> dict[str, np.ndarray]:
  out, unknown = {}, []
  for name, value in arrays.items():
    if name in table:
      path, transpose = table[name]
      value = np.asarray(value)
      out[path] = value.T if transpose else value
    elif not any(name.startswith(p) or name.endswith(p) for p in ignore):
      unknown.append(name)
  if unknown:
    raise ValueError(f'{what}: {len(unknown)} entries are not {what} '
                     f'parameters, e.g. {unknown[:4]}. Is this the right '
                     'converter for the file?')
  return out


def _strip(arrays: dict[str, np.ndarray], prefixes) -> dict:
  """Drops a leading model prefix ('bert.', 'text_model.') if present."""
  out = {}
  for k, v in arrays.items():
    for p in prefixes:
      if k.startswith(p):
        k = k[len(p):]
        break
    out[k] = v
  return out


def convert_hf_bert(arrays: dict[str, np.ndarray], expected=None
                    ) -> dict[str, np.ndarray]:
  """HF BertModel (e.g. all-MiniLM-L6-v2 model.safetensors) -> `BertText`.

  The pooler (tanh head on [CLS]) and the position_ids buffer are not used
  by sentence embeddings and are dropped.
  """
  del expected
  arrays = _strip(arrays, ('bert.', 'model.'))
  table = {
      'embeddings.word_embeddings.weight': ('token_embed', False),
      'embeddings.position_embeddings.weight': ('pos_embed', False),
      'embeddings.token_type_embeddings.weight': ('type_embed', False),
      'embeddings.LayerNorm.weight': ('embed_norm/scale', False),
      'embeddings.LayerNorm.bias': ('embed_norm/bias', False),
  }
  depth = len({k.split('.')[2] for k in arrays
               if k.startswith('encoder.layer.')})
  for i in range(depth):
    table.update(_layer_map(f'encoder.layer.{i}', f'layers/{i}', {
        'attention.self.query': 'attn/q', 'attention.self.key': 'attn/k',
        'attention.self.value': 'attn/v', 'attention.output.dense':
            'attn/out', 'attention.output.LayerNorm': 'norm1',
        'intermediate.dense': 'fc1', 'output.dense': 'fc2',
        'output.LayerNorm': 'norm2'}))
  return _apply_map(arrays, table, ignore=('position_ids', 'pooler.'),
                    what='BERT')


def convert_hf_clip_text(arrays: dict[str, np.ndarray], expected=None
                         ) -> dict[str, np.ndarray]:
  """transformers CLIPTextModel(WithProjection) -> `CLIPText`."""
  del expected
  arrays = _strip(arrays, ('text_model.',))
  table = {
      'embeddings.token_embedding.weight': ('token_embed', False),
      'embeddings.position_embedding.weight': ('pos_embed', False),
      'final_layer_norm.weight': ('final_norm/scale', False),
      'final_layer_norm.bias': ('final_norm/bias', False),
      'text_projection.weight': ('proj/kernel', True),
  }
  depth = len({k.split('.')[2] for k in arrays
               if k.startswith('encoder.layers.')})
  for i in range(depth):
    table.update(_layer_map(f'encoder.layers.{i}', f'layers/{i}', {
        'self_attn.q_proj': 'attn/q', 'self_attn.k_proj': 'attn/k',
        'self_attn.v_proj': 'attn/v', 'self_attn.out_proj': 'attn/out',
        'layer_norm1': 'norm1', 'layer_norm2': 'norm2', 'mlp.fc1': 'fc1',
        'mlp.fc2': 'fc2'}))
  return _apply_map(arrays, table, ignore=('position_ids', 'logit_scale'),
                    what='CLIP text')
