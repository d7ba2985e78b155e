"""InstructPix2Pix's denoiser (Brooks, Holynski & Efros 2023) at scene-world
size: a U-Net that reads the source image by channel concatenation
(`UNet(concat_channels=C)`, cond['concat']) and an instruction through a
small trainable text embedding added to its time embedding.

The instruction embedding is order-aware: token embeddings (scene_words
ids, `visgen.data.tokenize`) at their positions, flattened and mapped by a
two-layer MLP ("make the red square green" and "make the green square red"
differ). Padding tokens (id 0) contribute nothing, so the null instruction
(all padding: the text dropout of training and the null_T of dual guidance)
is the MLP's learned constant. A text encoder of `visgen.models` can replace
it later; this keeps the task independent of one.

Warm start from an unconditional or class-conditional base U-Net:
`INIT_MAPPING` copies 'unet/<p>' from the base's '<p>' except the new
concat input projection (zero at init: the extra input channels start at
zero, as in the paper) and the instruction embedding.
"""

from flax import nnx
import jax
import jax.numpy as jnp

from visgen.models import layers
from visgen.models import unet as unet_lib

INIT_MAPPING = (('unet/concat_in/.*', None), ('text/.*', None),
                ('unet/(.*)', r'\1'))
# With cross-attention (`unet.text_encoder`): the instruction encoder and the
# attention blocks' cross-attention are new too (a base without them).
XATTN_INIT_MAPPING = (('unet/text/.*', None),
                      ('unet/.*/cross/.*', None)) + INIT_MAPPING
TEXT_KEYS = ('text_tokens', 'text_mask')


def scene_vocab_size() -> int:
  from visgen.data import tokenize  # pylint: disable=g-import-not-at-top

  return len(tokenize.scene_vocabulary()) + 1  # + padding


class InstructionEmbedder(nnx.Module):
  """tokens (B, L) int -> (B, out_dim); padding (0) contributes nothing."""

  def __init__(self, vocab_size: int, max_len: int, dim: int, out_dim: int,
               *, rngs: nnx.Rngs):
    self.table = layers.make_param(rngs.params(), layers.normal,
                                   (vocab_size, dim), ('vocab', 'embed'))
    self.fc1 = layers.Dense(max_len * dim, out_dim, rngs=rngs,
                            axes=(None, 'embed'))
    self.fc2 = layers.Dense(out_dim, out_dim, rngs=rngs,
                            axes=('embed', None))
    self.vocab_size, self.max_len = vocab_size, max_len

  def __call__(self, tokens: jax.Array) -> jax.Array:
    if tokens.ndim != 2 or tokens.shape[1] != self.max_len:
      raise ValueError(f'Instruction tokens must be (B, {self.max_len}) '
                       f'(the tokenizer max_len), got {tokens.shape}.')
    tokens = tokens.astype(jnp.int32)
    e = jnp.take(self.table[...], tokens, axis=0)
    e = e * (tokens > 0)[..., None]
    e = e.reshape(tokens.shape[0], -1)
    return self.fc2(jax.nn.silu(self.fc1(e)))


class InstructUNet(nnx.Module):
  """(x_t, t, cond{'concat': source, text_key: tokens}) -> prediction.

  `source_skip=True` (x0 prediction only; the task checks) returns the
  source plus the U-Net's output: the network learns the edit as a change
  of the source (zero where nothing changes) instead of re-drawing the
  scene; dropped images (zeros) make it the plain generator.
  """

  def __init__(self, *, rngs: nnx.Rngs, unet: dict, vocab_size: int = 0,
               max_len: int = 12, text_dim: int = 16,
               text_key: str = 'instruction_tokens',
               source_skip: bool = False):
    kw = dict(unet)
    kw.pop('name', None)
    if isinstance(kw.get('dtype'), str):
      kw['dtype'] = {'float32': jnp.float32,
                     'bfloat16': jnp.bfloat16}[kw['dtype']]
    kw.setdefault('concat_channels', kw.get('in_channels', 3))
    if not kw['concat_channels']:
      raise ValueError('InstructUNet needs unet.concat_channels > 0 (the '
                       'source image channels).')
    self.unet = unet_lib.UNet(rngs=rngs, **kw)
    emb_dim = 4 * kw.get('model_channels', 128)
    self.text = InstructionEmbedder(vocab_size or scene_vocab_size(),
                                    max_len, text_dim, emb_dim, rngs=rngs)
    self.text_key = text_key
    if source_skip and kw['concat_channels'] != self.unet.out_channels:
      raise ValueError(
          f'InstructUNet(source_skip=True) adds the source to the output: '
          f"unet.concat_channels ({kw['concat_channels']}) must equal the "
          f'output channels ({self.unet.out_channels}).')
    self.source_skip = source_skip
    # With `unet.text_encoder` (e.g. scene_text) the U-Net's attention
    # blocks also cross-attend to the encoded instruction (SD's route in
    # the paper); its token ids and mask come from cond[text_key].
    self.cross = self.unet.text is not None
    self.cond_keys = tuple(
        k for k in self.unet.cond_keys if k not in TEXT_KEYS) + (text_key,)
    self.input_size, self.in_channels = self.unet.input_size, (
        self.unet.in_channels)

  def __call__(self, x_t: jax.Array, t: jax.Array, cond: dict | None = None,
               *, train: bool = False, rngs: nnx.Rngs | None = None):
    cond = layers.check_cond(cond, self.cond_keys, 'InstructUNet')
    tokens = cond[self.text_key]
    if self.cross:
      present = jnp.asarray(tokens) > 0
      # All padding (the dropped / null instruction) reads the learned null.
      cond = dict(cond, text_tokens=tokens, text_mask=present,
                  text_null=~present.any(-1))
    out = self.unet(x_t, t, cond, train=train, rngs=rngs,
                    extra_emb=self.text(tokens))
    if self.source_skip:
      # x0 = source + a learned change: copying is the identity, and the
      # null image (zeros) leaves plain generation.
      out = out + cond['concat'].astype(out.dtype)
    return out
