r"""transformers text-model directories -> visgen text encoders.

  python -m visgen.convert --from=transformers --src=DIR --out=OUT [--verify]

DIR holds `config.json` and `model.safetensors` of a BertModel (e.g.
sentence-transformers/all-MiniLM-L6-v2) or a CLIPTextModel /
CLIPTextModelWithProjection (Stable Diffusion's text tower; a full
CLIPModel's text half is taken too). They become `bert_text` /
`clip_text` (`visgen.models.text_encoders`) through the same name maps
the frozen components use (`hf_bert`, `hf_clip_text`), so OUT is a frozen
text encoder (`visgen.convert.frozen_entry(OUT)`, task.text_encoder) or an
`init_from` source. `--verify` runs transformers' model and the port on the
same random token ids (with padding) and reports the maximum relative
error over the token states and the pooled vector.

Pooled vectors: BERT's are mean-pooled over unpadded tokens and
L2-normalised (sentence-transformers; `normalize` in the config), CLIP's
are the EOS token's state (projected when the checkpoint has
text_projection).
"""

import os

import numpy as np

from visgen import convert
from visgen import weights as weights_lib
from visgen.models import text_encoders

WEIGHTS_FILE = 'model.safetensors'
_ACTS = {'gelu': 'gelu', 'gelu_new': 'gelu_tanh', 'quick_gelu': 'quick_gelu',
         'gelu_pytorch_tanh': 'gelu_tanh'}


def _act(cfg: dict) -> str:
  act = cfg.get('hidden_act', 'gelu')
  if act not in _ACTS or _ACTS[act] not in text_encoders.ACTS:
    raise ValueError(f'hidden_act {act!r} is not supported; supported: '
                     f'{sorted(a for a in _ACTS if _ACTS[a] in text_encoders.ACTS)}.')
  return _ACTS[act]


def model_config(cfg: dict, arrays: dict) -> tuple[dict, str]:
  """(visgen model config, weight converter name) of a transformers
  config.json and its arrays."""
  kind = cfg.get('model_type')
  if kind == 'clip':  # a full CLIPModel: its text tower
    cfg = dict(cfg.get('text_config') or {}, model_type='clip_text_model')
    kind = 'clip_text_model'
  if kind not in ('bert', 'clip_text_model'):
    raise ValueError(f'config.json model_type {kind!r}: only bert, '
                     'clip_text_model and clip are converted.')
  missing = [k for k in ('vocab_size', 'hidden_size', 'num_hidden_layers',
                         'num_attention_heads', 'intermediate_size',
                         'max_position_embeddings') if k not in cfg]
  if missing:
    raise ValueError(f'config.json ({kind}) lacks {missing}.')
  common = dict(vocab_size=int(cfg['vocab_size']),
                width=int(cfg['hidden_size']),
                depth=int(cfg['num_hidden_layers']),
                heads=int(cfg['num_attention_heads']),
                mlp_dim=int(cfg['intermediate_size']),
                max_len=int(cfg['max_position_embeddings']), act=None,
                dtype='float32')
  if kind == 'bert':
    common.pop('act')
    if _act(cfg) != 'gelu':
      raise ValueError(f'BERT hidden_act {cfg.get("hidden_act")!r}: the '
                       'port uses exact gelu.')
    return dict(name='bert_text', **common,
                type_vocab_size=int(cfg.get('type_vocab_size', 2)),
                eps=float(cfg.get('layer_norm_eps', 1e-12)),
                normalize=True), 'hf_bert'
  proj = [k for k in arrays if k.endswith('text_projection.weight')]
  eos = cfg.get('eos_token_id')
  return dict(name='clip_text', **dict(common, act=_act(cfg)),
              eps=float(cfg.get('layer_norm_eps', 1e-5)),
              proj_dim=int(arrays[proj[0]].shape[0]) if proj else 0,
              # transformers: eos_token_id 2 is the legacy configs' value,
              # whose EOS is the highest id (argmax pooling, None here).
              eos_token_id=None if eos in (None, 2) else int(eos)
              ), 'hf_clip_text'


def _read(src: str) -> tuple[dict, dict[str, np.ndarray]]:
  return convert.read_model_dir(src, WEIGHTS_FILE, 'transformers')


def convert_dir(src: str, out: str, **unused) -> dict:
  """Converts a transformers text-model directory into OUT."""
  del unused
  cfg, arrays = _read(src)
  if cfg.get('model_type') == 'clip':
    arrays = {k: v for k, v in arrays.items()
              if k.startswith('text_model.') or k.startswith(
                  'text_projection.')}
  model_cfg, converter = model_config(cfg, arrays)
  expected = convert.expected_params(model_cfg)
  flat = weights_lib.CONVERTERS.get(converter)(arrays, expected)
  flat = {k: np.ascontiguousarray(v, np.float32) for k, v in flat.items()}
  return convert.write_checked(flat, model_cfg, f'{src}/{WEIGHTS_FILE}',
                               out, fmt=f'transformers {cfg.get("model_type")}',
                               expected=expected)


REFERENCE_HINT = ('pip install torch transformers (CPU wheels: pip install '
                  'torch --index-url https://download.pytorch.org/whl/cpu); '
                  'both are optional, only --verify and its tests use them')


def verify(src: str, out: str, *, batch: int = 2, length: int = 12,
           seed: int = 0, **unused) -> float:
  """Max relative error of the port against transformers on random ids
  (the second row padded after half its length)."""
  del unused
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'{e}. {REFERENCE_HINT}.') from e
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  model, model_cfg = convert.load_converted(out)
  rng = np.random.default_rng(seed)
  n = min(length, model_cfg['max_len'])
  ids = rng.integers(3, model_cfg['vocab_size'] - 1, (batch, n))
  mask = np.ones((batch, n), bool)
  if model_cfg['name'] == 'clip_text':
    eos = model_cfg.get('eos_token_id')
    if eos is None:  # argmax pooling: the EOS is the highest id
      eos = model_cfg['vocab_size'] - 1
    ids = np.where(ids == eos, eos - 1 if eos > 3 else eos + 1, ids)
    ids[:, -1] = eos  # every row ends with its EOS
    ref = transformers.CLIPTextModelWithProjection if model_cfg[
        'proj_dim'] else transformers.CLIPTextModel
  else:
    mask[1:, n // 2:] = False
    ref = transformers.BertModel
  ref = ref.from_pretrained(os.path.expanduser(src)).float().eval()
  with torch.no_grad():
    o = ref(input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long())
  hidden = o.last_hidden_state.numpy()
  if model_cfg['name'] == 'bert_text':
    m = mask[..., None].astype(np.float32)
    pooled = (hidden * m).sum(1) / m.sum(1)
    pooled /= np.linalg.norm(pooled, axis=-1, keepdims=True)
  else:
    pooled = (o.text_embeds if model_cfg['proj_dim'] else
              o.pooler_output).numpy()
  got_h, got_p = model(jnp.asarray(ids), jnp.asarray(mask))
  errs = []
  for got, want, valid in ((got_h, hidden, mask), (got_p, pooled, None)):
    got = np.asarray(got)
    if valid is not None:  # padded positions are not defined outputs
      got, want = got[valid], want[valid]
    errs.append(float(np.max(np.abs(got - want)) / np.max(np.abs(want))))
  return max(errs)
