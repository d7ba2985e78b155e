"""InstructPix2Pix as a task: edit a scene by an instruction
(Brooks, Holynski & Efros 2023), trained on `shapes_edit` pairs.

  config.data  = dict(name='shapes_edit', resolution=32, batch_size=...,
                      tokenizer=dict(name='scene_words', max_len=10,
                                     keys=('instruction',)))
  config.task  = dict(name='instruct_edit', x_shape=(32, 32, 3),
                      image_dropout=0.05, text_dropout=0.05,
                      both_dropout=0.05)
  config.model = dict(name='instruct_unet', unet=dict(..., concat_channels=3),
                      max_len=10)
  config.sampler = dict(name='heun', steps=16, cfg_scale=s_T)
  config.task.image_cfg_scale = s_I

Batch -> x0 = the edited scene ('edited_image'), cond = {'concat': the
source scene ('image') in [-1, 1], 'instruction_tokens': ids}. Dropout as
the paper (5% each, per example): image only, text only, both; the null
image is zeros, the null instruction all padding. Sampling uses the dual
classifier-free guidance `samplers.guidance.dual_cfg`:
e(0,0) + s_I (e(c_I,0) - e(0,0)) + s_T (e(c_I,c_T) - e(c_I,0)), whose
text scale s_T is the task contract's `guidance` and s_I `image_guidance`
(default `config.task.image_cfg_scale`, 1.5 as in the paper).
The path / prediction / weighting / time distribution are the config's.
Options measured in configs/ip2p_shapes.py: `config.model.source_skip`
(x0 = source + network output; x0 prediction only) and
`config.task.edit_weight` (squared error on the edit mask counted k times,
through `unified_loss(..., pixel_weight=)`; the batch then carries
'edit_mask').
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from visgen import media as media_lib
from visgen.data import preprocess
from visgen.samplers import guidance as guidance_lib
from visgen.tasks import base
from visgen.tasks import generation
from visgen.tasks import image_cond
from visgen.validate import UserError


class InstructEditTask(image_cond.HeldoutCond, generation.GenerationTask):
  """Instruction editing with two-scale guidance (module docstring)."""

  # Its conditions come from data (held-out batches): `visgen.generate`
  # has nothing to ask for; use --mode=sample.
  REQUESTS = ()

  def __init__(self, config, *, apply=None, frozen_apply=None):
    super().__init__(config, apply=apply, frozen_apply=frozen_apply)
    t = config.task
    image_cond.require_pixel_space(self, config.task.name)
    if self.num_classes or self.flatten or self.learned_variance is not None:
      raise UserError('instruct_edit takes no class labels, flatten or '
                      'learned variance (config.task.num_classes=0).')
    self.source_key = t.get('source_key', 'image')
    self.target_key = t.get('target_key', 'edited_image')
    self.text_key = t.get('text_key', 'instruction_tokens')
    self.p_image = float(t.get('image_dropout', 0.05))
    self.p_text = float(t.get('text_dropout', 0.05))
    self.p_both = float(t.get('both_dropout', 0.05))
    self.image_cfg_scale = float(t.get('image_cfg_scale', 1.5))
    # Squared error inside the edit mask counts `edit_weight` times (1: the
    # paper's plain loss): the few changed pixels carry all of the
    # instruction's signal.
    self.edit_weight = float(t.get('edit_weight', 1.0))
    if self.edit_weight < 1:
      raise UserError('config.task.edit_weight must be >= 1 (1 = the plain '
                      f'loss), got {self.edit_weight}.')
    if min(self.p_image, self.p_text, self.p_both) < 0 or (
        self.p_image + self.p_text + self.p_both > 1):
      raise UserError('config.task image_dropout, text_dropout and '
                      'both_dropout must be >= 0 and sum to <= 1.')
    tok = (config.data.get('tokenizer') or {})
    self.max_len = int(dict(tok).get('max_len', 0)) if tok else 0
    if not self.max_len:
      raise UserError(
          'instruct_edit reads tokenised instructions: set '
          "config.data.tokenizer = dict(name='scene_words', max_len=10, "
          "keys=('instruction',)).")
    if config.model.get('source_skip') and config.prediction != 'x0':
      raise UserError(
          'instruct_edit: config.model.source_skip adds the source image to '
          "the network's output, which only means something for "
          f"prediction='x0' (got {config.prediction!r}); set "
          "config.prediction = 'x0' or source_skip = False.")
    self.size = int(self.x_shape[0])
    self.config = config
    self.batch_keys = (self.source_key, self.target_key, self.text_key) + (
        ('edit_mask',) if self.edit_weight != 1 else ())

  # -- Batch -> (x0, cond) --------------------------------------------------

  def to_x0(self, batch: dict, frozen=None, key=None) -> jax.Array:
    del frozen, key
    return image_cond.target_image(
        batch, self.target_key, self.size,
        what=f'instruct_edit (edit target {self.target_key!r})')

  def source(self, batch: dict) -> jax.Array:
    if self.source_key not in batch:
      raise UserError(
          f'instruct_edit: the batch has no edit source {self.source_key!r} '
          f'(it has {", ".join(sorted(batch))}); use the shapes_edit dataset '
          'or set config.task.source_key.')
    return image_cond.control_map({'image': batch[self.source_key]},
                                  'image', self.size,
                                  what='instruct_edit (edit source)')

  def tokens(self, batch: dict) -> jax.Array:
    if self.text_key not in batch:
      raise UserError(
          f'instruct_edit: the batch has no {self.text_key!r}; tokenise the '
          "instruction (config.data.tokenizer keys=('instruction',)).")
    tok = jnp.asarray(batch[self.text_key], jnp.int32)
    if tok.ndim != 2 or tok.shape[1] != self.max_len:
      raise UserError(f'instruct_edit: {self.text_key!r} has shape '
                      f'{tuple(tok.shape)}, expected (B, {self.max_len}).')
    return tok

  def drop(self, key, concat, tokens):
    """Per example: image only (p_image), text only (p_text), both."""
    u = jax.random.uniform(key, (concat.shape[0],))
    a, b = self.p_image, self.p_image + self.p_text
    c = b + self.p_both
    drop_img = (u < a) | ((u >= b) & (u < c))
    drop_txt = (u >= a) & (u < c)
    concat = jnp.where(drop_img[:, None, None, None], 0.0, concat)
    tokens = jnp.where(drop_txt[:, None], 0, tokens)
    return concat, tokens

  def cond(self, batch: dict, key: jax.Array | None) -> dict:
    concat, tokens = self.source(batch), self.tokens(batch)
    if key is not None:
      concat, tokens = self.drop(key, concat, tokens)
    return {'concat': concat, self.text_key: tokens}

  def pixel_weight(self, batch: dict):
    if self.edit_weight == 1:
      return None
    if 'edit_mask' not in batch:
      raise UserError('instruct_edit: config.task.edit_weight needs the '
                      "batch's 'edit_mask' (the shapes_edit dataset has it).")
    m = jnp.asarray(batch['edit_mask'], jnp.float32) / 255.0
    return 1.0 + (self.edit_weight - 1.0) * m

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    img = jax.ShapeDtypeStruct((batch_size,) + self.x_shape, jnp.uint8)
    spec = {self.source_key: img, self.target_key: img,
            self.text_key: jax.ShapeDtypeStruct((batch_size, self.max_len),
                                                jnp.int32)}
    if self.edit_weight != 1:
      spec['edit_mask'] = jax.ShapeDtypeStruct(
          (batch_size,) + self.x_shape[:2] + (1,), jnp.uint8)
    return spec

  # -- Sampling -------------------------------------------------------------

  def null_image(self, cond):
    return dict(cond, concat=jnp.zeros_like(cond['concat']))

  def null_text(self, cond):
    return {**cond, self.text_key: jnp.zeros_like(cond[self.text_key])}

  def sample(self, params, frozen, cond: dict, key: jax.Array, *, n: int,
             guidance: Any = 1.0, image_guidance: Any = None,
             sampler: dict | None = None, return_info: bool = False):
    """n edits of cond['concat'] by cond[text_key]; `guidance` = s_T,
    `image_guidance` = s_I (both traced)."""
    del frozen
    for k in ('concat', self.text_key):
      if k not in cond:
        raise UserError(f"instruct_edit sampling needs cond[{k!r}] (the "
                        'source image in [-1, 1] and the instruction '
                        'tokens); build it with eval_cond(batch).')
    if tuple(cond['concat'].shape[1:]) != self.x_shape:
      raise UserError(f"instruct_edit: cond['concat'] has shape "
                      f"{tuple(cond['concat'].shape)}, expected (n, "
                      f"{', '.join(map(str, self.x_shape))}).")
    s_i = self.image_cfg_scale if image_guidance is None else image_guidance
    denoise = guidance_lib.dual_cfg(
        self.network(params), image_scale=s_i, text_scale=guidance,
        null_image=self.null_image, null_text=self.null_text)
    out = image_cond.run_sampler(self, denoise, dict(cond), key, n=n,
                                 sampler=sampler, return_info=return_info)
    if return_info:
      return self.from_x(out[0]), out[1]
    return self.from_x(out)

  def to_media(self, samples, cond: dict) -> media_lib.Media:
    """source | edit panels."""
    m = base.array_media(samples, cond, x_shape=self.x_shape)
    if 'concat' in cond:
      m.condition = preprocess.to_uint8(np.asarray(cond['concat']))
    return m
