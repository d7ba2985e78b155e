"""Text encoders and text-to-image: the MiniLM port against an independent
numpy forward on the shipped weights, the CLIP converter, text-conditioned
denoisers (PixArt, MMDiT, U-Net with cross-attention), caption dropout, CFG
with a negative prompt, and the text_to_image task through the builder."""

import functools
import importlib.util
import os

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest
from scipy import special

from visgen import builder
from visgen import config_lib
from visgen import frozen as frozen_lib
from visgen import param_tree
from visgen import sharding
from visgen import weights
from visgen.data import hf_tokenize
from visgen.data import shapes
from visgen.data import tokenize
from visgen.models import functional
from visgen.models import mmdit
from visgen.models import pixart
from visgen.models import text_encoders as te
from visgen.models import unet
from visgen.tasks import base
from visgen.tasks import text_to_image

MINILM = hf_tokenize.minilm_dir()


needs_minilm = pytest.mark.skipif(
    MINILM is None, reason='MiniLM weights not installed (optional): '
    + hf_tokenize.INSTALL)


# ----------------------------------------------------------------------------
# Independent numpy transformer forward on HF-named weights (float64).
# ----------------------------------------------------------------------------


def _ln(x, a, name, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * a[name + '.weight'] + a[
      name + '.bias']


def _lin(a, x, name):
  out = x @ a[name + '.weight'].T
  return out + a[name + '.bias'] if name + '.bias' in a else out


def _attn(a, x, names, heads, allowed):
  q, k, v = (_lin(a, x, n) for n in names[:3])
  b, n, d = x.shape
  sp = lambda y: y.reshape(b, n, heads, d // heads).transpose(0, 2, 1, 3)
  q, k, v = sp(q), sp(k), sp(v)
  s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // heads)
  s = np.where(allowed, s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  o = (p @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
  return _lin(a, o, names[3])


def np_bert(a, ids, mask, *, heads, eps=1e-12):
  """HF BertModel + sentence-transformers mean pooling + Normalize."""
  a = {k: np.asarray(v, np.float64) for k, v in a.items()
       if not k.endswith('position_ids')}
  n = ids.shape[1]
  x = (a['embeddings.word_embeddings.weight'][ids]
       + a['embeddings.position_embeddings.weight'][:n]
       + a['embeddings.token_type_embeddings.weight'][0])
  x = _ln(x, a, 'embeddings.LayerNorm', eps)
  allowed = mask[:, None, None, :]
  depth = len({k.split('.')[2] for k in a if k.startswith('encoder.layer.')})
  for i in range(depth):
    p = f'encoder.layer.{i}.'
    att = _attn(a, x, [p + 'attention.self.query', p + 'attention.self.key',
                       p + 'attention.self.value',
                       p + 'attention.output.dense'], heads, allowed)
    x = _ln(x + att, a, p + 'attention.output.LayerNorm', eps)
    h = _lin(a, x, p + 'intermediate.dense')
    h = 0.5 * h * (1 + special.erf(h / np.sqrt(2)))
    x = _ln(x + _lin(a, h, p + 'output.dense'), a, p + 'output.LayerNorm',
            eps)
  m = mask[..., None].astype(np.float64)
  pooled = (x * m).sum(1) / m.sum(1)
  return x, pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


def np_clip(a, ids, *, heads, eos_token_id, eps=1e-5):
  """transformers CLIPTextModelWithProjection, quick GELU, causal mask."""
  a = {k[len('text_model.'):] if k.startswith('text_model.') else k:
       np.asarray(v, np.float64) for k, v in a.items()}
  n = ids.shape[1]
  x = (a['embeddings.token_embedding.weight'][ids]
       + a['embeddings.position_embedding.weight'][:n])
  allowed = np.tril(np.ones((n, n), bool))[None, None]
  depth = len({k.split('.')[2] for k in a if k.startswith('encoder.layers.')})
  for i in range(depth):
    p = f'encoder.layers.{i}.'
    h = _ln(x, a, p + 'layer_norm1', eps)
    x = x + _attn(a, h, [p + 'self_attn.q_proj', p + 'self_attn.k_proj',
                         p + 'self_attn.v_proj', p + 'self_attn.out_proj'],
                  heads, allowed)
    h = _lin(a, _ln(x, a, p + 'layer_norm2', eps), p + 'mlp.fc1')
    h = h / (1 + np.exp(-1.702 * h))
    x = x + _lin(a, h, p + 'mlp.fc2')
  x = _ln(x, a, 'final_layer_norm', eps)
  idx = np.argmax(ids == eos_token_id, axis=-1)
  pooled = x[np.arange(len(ids)), idx] @ a['text_projection.weight'].T
  return x, pooled


def rel_err(a, b):
  return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


# ----------------------------------------------------------------------------
# MiniLM (shipped weights) and CLIP (synthetic HF state dict).
# ----------------------------------------------------------------------------

# 'a red circle', 'a small red circle left of a large blue square' and
# 'a blue square' in the MiniLM (BERT uncased) vocabulary, [CLS] ... [SEP].
MINILM_IDS = [[101, 1037, 2417, 4418, 102],
              [101, 1037, 2235, 2417, 4418, 2187, 1997, 1037, 2312, 2630,
               2675, 102],
              [101, 1037, 2630, 2675, 102]]


def _padded(rows, n, pad=0):
  ids = np.full((len(rows), n), pad, np.int32)
  mask = np.zeros((len(rows), n), bool)
  for i, r in enumerate(rows):
    ids[i, :len(r)], mask[i, :len(r)] = r, True
  return ids, mask


def _frozen_config(name, model, source, converter):
  c = mlc.ConfigDict()
  c.sharding = config_lib.mesh_and_sharding('dp')
  c.frozen = mlc.ConfigDict()
  c.frozen[name] = dict(model=model, source=source, converter=converter)
  return c


@needs_minilm
def test_minilm_port_matches_an_independent_numpy_forward():
  """The frozen component (safetensors + converter 'hf_bert') against a
  float64 numpy BertModel + mean pooling + L2 normalisation on the shipped
  all-MiniLM-L6-v2 weights: pooled and token embeddings to 1e-4."""
  path = os.path.join(MINILM, 'model.safetensors')
  cfg = _frozen_config('text_encoder', dict(name='bert_text'),
                       'safetensors:' + path, 'hf_bert')
  fz = frozen_lib.build_frozen(cfg, sharding.make_mesh(cfg.sharding.mesh))
  ids, mask = _padded(MINILM_IDS, 14)
  tokens, pooled = jax.jit(fz.apply['text_encoder'])(
      fz.params['text_encoder'], ids, mask)
  ref_tokens, ref_pooled = np_bert(weights.read_safetensors(path), ids, mask,
                                   heads=12)
  assert pooled.shape == (3, 384) and tokens.shape == (3, 14, 384)
  assert rel_err(pooled, ref_pooled) <= 1e-4
  assert rel_err(np.asarray(tokens)[mask], ref_tokens[mask]) <= 1e-4
  np.testing.assert_allclose(np.linalg.norm(pooled, axis=-1), 1, atol=1e-5)
  # Padding never changes a sentence's embedding (a 5-token text alone).
  ids5, mask5 = _padded(MINILM_IDS[:1], 5)
  _, alone = jax.jit(fz.apply['text_encoder'])(fz.params['text_encoder'],
                                               ids5, mask5)
  assert rel_err(alone[0], np.asarray(pooled)[0]) <= 1e-5


@pytest.mark.skipif(MINILM is None or importlib.util.find_spec('tokenizers')
                    is None, reason='MiniLM files / tokenizers not installed '
                    '(optional): ' + hf_tokenize.INSTALL)
def test_minilm_tokenizer_through_the_registry():
  tok = tokenize.get_tokenizer(dict(name='hf', path='minilm', max_len=14))
  ids, mask = tok.encode('A small red circle left of a large blue square')
  np.testing.assert_array_equal(ids, _padded(MINILM_IDS[1:2], 14)[0][0])
  assert mask.sum() == 12
  with pytest.raises(ValueError, match='max_len=14'):
    tok.encode('a red circle ' * 10)


CLIP_KW = dict(vocab_size=50, width=16, depth=2, heads=2, mlp_dim=32,
               max_len=8, proj_dim=12, eos_token_id=49)


def _clip_state_dict(rng, c=CLIP_KW):
  w, m = c['width'], c['mlp_dim']
  sd = {'text_model.embeddings.token_embedding.weight': (c['vocab_size'], w),
        'text_model.embeddings.position_embedding.weight': (c['max_len'], w),
        'text_model.final_layer_norm.weight': (w,),
        'text_model.final_layer_norm.bias': (w,),
        'text_projection.weight': (c['proj_dim'], w)}
  for i in range(c['depth']):
    p = f'text_model.encoder.layers.{i}.'
    for n in ('q_proj', 'k_proj', 'v_proj', 'out_proj'):
      sd[p + f'self_attn.{n}.weight'] = (w, w)
      sd[p + f'self_attn.{n}.bias'] = (w,)
    for n in ('layer_norm1', 'layer_norm2'):
      sd[p + n + '.weight'], sd[p + n + '.bias'] = (w,), (w,)
    sd[p + 'mlp.fc1.weight'], sd[p + 'mlp.fc1.bias'] = (m, w), (m,)
    sd[p + 'mlp.fc2.weight'], sd[p + 'mlp.fc2.bias'] = (w, m), (w,)
  out = {k: (0.3 * rng.standard_normal(s)).astype(np.float32)
         for k, s in sd.items()}
  out['text_model.embeddings.position_ids'] = np.arange(
      c['max_len'])[None].astype(np.int64)
  return out


def test_clip_converter_tree_and_forward(tmp_path):
  """transformers CLIPTextModelWithProjection names -> exactly the model's
  parameter tree (paths and shapes), loaded as a frozen component; the
  forward (causal, quick GELU, EOS pooling, projection) equals numpy's."""
  sd = _clip_state_dict(np.random.default_rng(0))
  model = nnx.eval_shape(lambda: te.CLIPText(rngs=nnx.Rngs(0), **CLIP_KW))
  _, abstract = functional.split_model(model)
  want = {p: tuple(v.shape) for p, v in param_tree.flatten(abstract).items()}
  got = {p: v.shape for p, v in te.convert_hf_clip_text(sd).items()}
  assert got == want
  path = str(tmp_path / 'clip.safetensors')
  weights.write_safetensors(path, sd)
  cfg = _frozen_config('clip', dict(name='clip_text', **CLIP_KW),
                       'safetensors:' + path, 'hf_clip_text')
  fz = frozen_lib.build_frozen(cfg, sharding.make_mesh(cfg.sharding.mesh))
  ids = np.array([[3, 7, 9, 49, 0, 0, 0, 0], [5, 49, 0, 0, 0, 0, 0, 0]])
  tokens, pooled = fz.apply['clip'](fz.params['clip'], ids)
  ref_tokens, ref_pooled = np_clip(sd, ids, heads=2, eos_token_id=49)
  assert rel_err(pooled, ref_pooled) <= 1e-4
  assert rel_err(tokens, ref_tokens) <= 1e-4
  # A wrong file is refused by name.
  with pytest.raises(ValueError, match='not CLIP text parameters'):
    te.convert_hf_clip_text({'vision_model.x.weight': np.zeros(2)})


# ----------------------------------------------------------------------------
# Text-conditioned denoisers.
# ----------------------------------------------------------------------------

S, C, L, D, P = 8, 3, 6, 16, 8  # image side, channels, text len/dim, pooled
DENOISERS = {
    'pixart': (pixart.PixArt, dict(input_size=S, in_channels=C, patch=2,
                                   width=32, depth=2, heads=2)),
    'mmdit': (mmdit.MMDiT, dict(input_size=S, in_channels=C, patch=2,
                                width=32, depth=2, heads=2)),
    'unet': (unet.UNet, dict(input_size=S, in_channels=C, model_channels=16,
                             channel_mult=(1, 2), num_res_blocks=1,
                             attention_resolutions=(4,), num_heads=2)),
}


def _perturbed(params, seed):
  """Every parameter moved off its init (zero-init outputs included), so
  each input path shows in the output."""
  rng = np.random.default_rng(seed)  # numpy: no compile per shape
  return jax.tree.map(lambda x: jnp.asarray(
      np.asarray(x) + 0.2 * rng.standard_normal(x.shape).astype(np.float32)),
                      params)


@functools.cache
def _denoiser(name):
  cls, kw = DENOISERS[name]
  model = cls(rngs=nnx.Rngs(0), text_dim=D, pooled_dim=P, **kw)
  graphdef, params = functional.split_model(model)
  return model.cond_keys, jax.jit(functional.make_apply(graphdef)), (
      _perturbed(params, 1))


@pytest.mark.parametrize('name', sorted(DENOISERS))
def test_text_denoisers_read_text_and_ignore_padding(name):
  keys, apply, params = _denoiser(name)
  assert set(keys) == {'text', 'text_mask', 'text_pooled'}
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((4, S, S, C)), jnp.float32)
  t = jnp.full((4,), 0.5)
  text = rng.standard_normal((4, L, D)).astype(np.float32)
  mask = np.arange(L)[None] < np.array([[2], [3], [6], [1]])
  pooled = rng.standard_normal((4, P)).astype(np.float32)
  cond = dict(text=text, text_mask=mask, text_pooled=pooled,
              text_null=np.zeros(4, bool))
  out = apply(params, x, t, cond)
  assert out.shape == (4, S, S, C) and np.all(np.isfinite(out))
  # Padding positions hold anything: the output does not move.
  noisy = np.where(mask[..., None], text, 100 * rng.standard_normal(
      text.shape)).astype(np.float32)
  np.testing.assert_allclose(apply(params, x, t, dict(cond, text=noisy)),
                             out, rtol=1e-5, atol=1e-5)
  # Real tokens and the pooled vector both change it, per sample.
  other = text.copy()
  other[0, 0] += 1.0
  moved = np.abs(np.asarray(apply(params, x, t, dict(cond, text=other))
                            - out)).max(axis=(1, 2, 3))
  assert moved[0] > 1e-3 and np.all(moved[1:] < 1e-5)
  moved = np.abs(np.asarray(apply(params, x, t, dict(
      cond, text_pooled=pooled + 1.0))) - out).max()
  assert moved > 1e-3
  # The learned null replaces the text of the flagged samples only.
  null = np.array([True, False, True, False])
  a = apply(params, x, t, dict(cond, text_null=null))
  b = apply(params, x, t, dict(cond, text=noisy * 3, text_pooled=pooled * 0,
                               text_null=null))
  np.testing.assert_allclose(np.asarray(a)[null], np.asarray(b)[null],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(a)[~null], np.asarray(out)[~null],
                             rtol=1e-5, atol=1e-5)


def test_trainable_scene_encoder_inside_a_denoiser():
  """text_encoder=dict(name='scene_text') makes the model read token ids;
  padding ids do not matter."""
  tok = tokenize.get_tokenizer(dict(name='scene_words', max_len=12))
  model = pixart.PixArt(rngs=nnx.Rngs(0), input_size=S, in_channels=C,
                        patch=4, width=16, depth=1, heads=2, pooled_dim=1,
                        text_encoder=dict(name='scene_text', width=16,
                                          depth=1, heads=2, max_len=12))
  assert model.cond_keys == ('text_tokens', 'text_mask')
  graphdef, params = functional.split_model(model)
  params = _perturbed(params, 2)
  apply = jax.jit(functional.make_apply(graphdef))
  ids, mask = map(np.stack, zip(*[tok.encode(s) for s in (
      'a small red circle', 'a large blue square above a small red circle')]))
  x, t = jnp.ones((2, S, S, C)), jnp.full((2,), 0.3)
  out = apply(params, x, t, dict(text_tokens=ids, text_mask=mask))
  junk = np.where(mask, ids, 5)
  np.testing.assert_allclose(
      apply(params, x, t, dict(text_tokens=junk, text_mask=mask)), out,
      rtol=1e-5, atol=1e-5)
  swapped = apply(params, x, t, dict(text_tokens=ids[::-1],
                                     text_mask=mask[::-1]))
  np.testing.assert_allclose(swapped[1], out[0], rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(swapped[0] - out[0])).max() > 1e-3


# ----------------------------------------------------------------------------
# The task: caption dropout, CFG with a negative prompt, train steps.
# ----------------------------------------------------------------------------


def t2i_config(null='learned'):
  c = config_lib.base_config()
  c.total_steps = 2
  c.ema_decays = (0.9,)
  c.num_grid_samples = 0
  c.data = dict(name='shapes', resolution=8, batch_size=4,
                tokenizer=dict(name='scene_words', max_len=20,
                               keys=('caption',)))
  c.task = dict(name='text_to_image', x_shape=(8, 8, 3), caption_dropout=0.5,
                null=null)
  c.model = dict(name='pixart', input_size=8, in_channels=3, patch=4,
                 width=16, depth=1, heads=2, pooled_dim=1,
                 text_encoder=dict(name='scene_text', width=16, depth=1,
                                   heads=2, max_len=20))
  c.path = dict(name='linear')
  c.prediction = 'velocity'
  c.weighting = dict(name='uniform')
  c.time_dist = dict(name='uniform')
  c.optim = config_lib.optim(lr=1e-3, warmup_steps=0, schedule='constant')
  c.sampler = dict(name='euler', steps=2, cfg_scale=3.0)
  return c


@pytest.fixture(scope='module')
def built():
  return builder.build(t2i_config())


def test_caption_dropout_is_per_sample():
  tok = tokenize.get_tokenizer(dict(name='scene_words', max_len=20))
  ids, mask = map(np.stack, zip(*[tok.encode('a small red circle')] * 256))
  empty_ids, empty_mask = tok.encode('')
  key = jax.random.key(3)
  _, _, null = text_to_image.drop_captions(
      key, ids, mask, p=0.25, null='learned', empty_tokens_L=empty_ids,
      empty_mask_L=empty_mask)
  assert 0.15 < float(np.mean(null)) < 0.35
  out_ids, out_mask, null2 = text_to_image.drop_captions(
      key, ids, mask, p=0.25, null='empty', empty_tokens_L=empty_ids,
      empty_mask_L=empty_mask)
  assert not np.any(null2)
  np.testing.assert_array_equal(np.asarray(out_ids)[np.asarray(null)],
                                np.broadcast_to(empty_ids, (int(np.sum(
                                    null)), 20)))
  np.testing.assert_array_equal(np.asarray(out_ids)[~np.asarray(null)],
                                ids[~np.asarray(null)])
  assert not np.any(np.asarray(out_mask)[np.asarray(null)])


def test_cfg_with_a_negative_prompt_is_the_hand_computed_combination(built):
  task = built.task
  params = _perturbed(built.init(jax.random.key(0))['params'], 4)
  cond = task.prompt_cond(['a small red circle', 'a large blue square'],
                          negative='a small green triangle')
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  t, s = jnp.full((2,), 0.6), 2.5

  @jax.jit
  def run(params, cond):
    guided, pos = task.guided_network(params, {}, cond, guidance=s)
    plain, _ = task.guided_network(
        params, {}, {k: cond[k] for k in ('text_tokens', 'text_mask')},
        guidance=s)
    net = task.network(params)
    neg = task.encode({}, cond['negative_tokens'], cond['negative_mask'],
                      False)
    null = task.null_cond({}, 2)
    return (guided(x, t, pos), plain(x, t, pos), net(x, t, pos),
            net(x, t, neg), net(x, t, null))

  guided, plain, c, u_neg, u_null = run(params, cond)
  np.testing.assert_allclose(guided, u_neg + s * (c - u_neg), rtol=1e-5,
                             atol=1e-5)
  assert np.abs(np.asarray(u_neg - u_null)).max() > 1e-3
  # Without a negative prompt the learned null is the unconditional half.
  np.testing.assert_allclose(plain, u_null + s * (c - u_null), rtol=1e-5,
                             atol=1e-5)


def test_text_to_image_task_contract_and_two_train_steps(built):
  task = base.check_task(built.task)
  spec = task.batch_spec(4)
  assert set(spec) == set(task.batch_keys) == {
      'image', 'caption_tokens', 'caption_mask'}
  # Real shapes examples through the tokenizer hook match the spec.
  hook = tokenize.make_hook(built.config.data.tokenizer)
  src = shapes.ShapesSource(split='train', resolution=8)
  examples = [hook(src[i]) for i in range(4)]
  batch = {k: np.stack([e[k] for e in examples]) for k in spec}
  for k, s in spec.items():
    assert batch[k].shape == s.shape and batch[k].dtype == s.dtype, k
  cond = task.sample_cond(3)
  assert cond['text_tokens'].shape == (3, 20)
  assert task.tokenizer.decode(cond['text_tokens'][0]) == task.captions(1)[0]
  state = builder.create_state(built, jax.random.key(0))
  step = builder.make_train_step(built)
  before = jax.tree.map(np.asarray, state['params'])
  for i in range(2):
    state, metrics = step(state, built.frozen.params, batch,
                          jax.random.key(i))
    assert np.isfinite(float(metrics['loss']))
  enc = 'text/encoder/layers/0/fc1/kernel'
  assert not np.allclose(param_tree.flatten(before)[enc],
                         param_tree.flatten(state['params'])[enc])
  # Guided sampling through the builder's sampler (traced CFG scale).
  sample = builder.make_sample_fn(built, 3)
  x = sample(state['params'], built.frozen.params, cond, jax.random.key(5),
             builder.guidance_scale(built.config))
  media = task.to_media(x, cond)
  assert media.samples.shape == (3, 8, 8, 3) and media.kind == 'image'


def test_frozen_text_encoder_and_empty_prompt_dropout(tmp_path):
  """task.text_encoder names a frozen component (here a scene_text encoder
  from an .npz): the task embeds captions with it, and null='empty' drops a
  caption to the embedding of the empty prompt."""
  enc_kw = dict(name='scene_text', width=16, depth=1, heads=2, max_len=20)
  enc = te.SceneText(rngs=nnx.Rngs(3), **{k: v for k, v in enc_kw.items()
                                          if k != 'name'})
  path = str(tmp_path / 'enc.npz')
  weights.save_npz(path, functional.split_model(enc)[1])
  c = t2i_config(null='empty')
  c.frozen.text_encoder = dict(model=enc_kw, source='npz:' + path)
  c.task.text_encoder = 'text_encoder'
  c.model = dict(name='pixart', input_size=8, in_channels=3, patch=4,
                 width=16, depth=1, heads=2, text_dim=16, pooled_dim=16)
  b = builder.build(c)
  task, frozen = b.task, b.frozen.params
  cond = task.prompt_cond(['a small red circle'] * 32)
  batch = {'caption_tokens': cond['text_tokens'],
           'caption_mask': cond['text_mask']}

  @jax.jit
  def run(frozen):
    return (task.train_cond(frozen, batch, jax.random.key(0)),
            task.null_cond(frozen, 1), task.encode(frozen, batch[
                'caption_tokens'], batch['caption_mask'], False))

  dropped, empty, kept = run(frozen)
  assert set(dropped) == {'text', 'text_mask', 'text_pooled', 'text_null'}
  assert not np.any(dropped['text_null'])
  is_empty = ~np.asarray(dropped['text_mask']).any(axis=1)
  assert 5 < is_empty.sum() < 27  # p = 0.5, per sample
  for k in ('text', 'text_pooled'):
    np.testing.assert_allclose(np.asarray(dropped[k])[is_empty],
                               np.broadcast_to(empty[k], (int(
                                   is_empty.sum()),) + empty[k].shape[1:]),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(dropped[k])[~is_empty],
                               np.asarray(kept[k])[~is_empty], rtol=1e-6,
                               atol=1e-6)
  # The frozen encoder is the saved one: same output as the module itself.
  _, pooled = enc(batch['caption_tokens'][:1], batch['caption_mask'][:1])
  np.testing.assert_allclose(kept['text_pooled'][:1], pooled, rtol=1e-5,
                             atol=1e-5)
