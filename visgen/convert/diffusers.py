"""diffusers `AutoencoderKL` directories -> visgen `autoencoder_kl`
(`DiTTransformer2DModel` directories -> `dit`: `visgen.convert.dit`).

A diffusers model directory holds `config.json` (the constructor arguments)
and `diffusion_pytorch_model.safetensors` (the PyTorch state dict), read
here with numpy (`visgen.weights.read_safetensors`; no torch). The parameter
trees correspond name for name (see `visgen.models.autoencoder`):

  encoder.down_blocks.0.resnets.1.conv1.weight (O, I, kh, kw)
      -> encoder/down_blocks/0/resnets/1/conv1/kernel (kh, kw, I, O)
  *.to_q.weight (O, I) -> */to_q/kernel (I, O);  *.to_out.0.* -> */to_out/*
  *norm*.weight -> */scale;  *.bias -> */bias

Older checkpoints name the mid-block attention query/key/value/proj_attn
and may store it as 1x1 convs; both are accepted. The config maps as
ch = block_out_channels[0], ch_mult = block_out_channels / ch,
num_res_blocks = layers_per_block, z_channels = latent_channels,
norm_groups = norm_num_groups, mid_attention = mid_block_add_attention;
`scaling_factor` (and `shift_factor`, `latents_mean`/`latents_std` when
present) become the latent statistics the latent codec reads.
"""

import json
import os
from typing import Any

import numpy as np

from visgen import convert
from visgen import weights as weights_lib

WEIGHTS_FILE = 'diffusion_pytorch_model.safetensors'
_LEGACY_ATTN = {'query': 'to_q', 'key': 'to_k', 'value': 'to_v',
                'proj_attn': 'to_out'}


def model_config(cfg: dict, *, input_size: int | None = None) -> dict:
  """The visgen model config of a diffusers AutoencoderKL config.json."""
  cls = cfg.get('_class_name', 'AutoencoderKL')
  if cls != 'AutoencoderKL':
    raise ValueError(f'Only AutoencoderKL is converted here; config.json '
                     f'names {cls!r}.')
  boc = [int(c) for c in cfg.get('block_out_channels', (64,))]
  ch = boc[0]
  if any(c % ch for c in boc):
    raise ValueError(f'block_out_channels {boc} are not multiples of the '
                     f'first ({ch}); visgen expresses them as ch * ch_mult.')
  for key, want in (('down_block_types', 'DownEncoderBlock2D'),
                    ('up_block_types', 'UpDecoderBlock2D')):
    bad = [b for b in cfg.get(key, [want]) if b != want]
    if bad:
      raise ValueError(f'{key} {bad} are not supported (only {want}).')
  if cfg.get('act_fn', 'silu') != 'silu':
    raise ValueError(f'act_fn {cfg["act_fn"]!r} is not supported (silu).')
  cin, cout = cfg.get('in_channels', 3), cfg.get('out_channels', 3)
  if cin != cout:
    raise ValueError(f'in_channels {cin} != out_channels {cout} is not '
                     'supported.')
  quant = cfg.get('use_quant_conv', True)
  if quant != cfg.get('use_post_quant_conv', True):
    raise ValueError('use_quant_conv and use_post_quant_conv must agree.')
  return dict(name='autoencoder_kl',
              input_size=int(input_size or cfg.get('sample_size', 32)),
              in_channels=int(cin), ch=ch, ch_mult=[c // ch for c in boc],
              num_res_blocks=int(cfg.get('layers_per_block', 1)),
              z_channels=int(cfg.get('latent_channels', 4)), double_z=True,
              norm_groups=int(cfg.get('norm_num_groups', 32)),
              mid_attention=bool(cfg.get('mid_block_add_attention', True)),
              use_quant_conv=bool(quant), dtype='float32')


def latent_stats(cfg: dict) -> dict:
  """The latent statistics a diffusers config carries."""
  out = dict(latent_scale_factor=float(cfg.get('scaling_factor', 0.18215)))
  if cfg.get('shift_factor') is not None:
    out['latent_shift_factor'] = float(cfg['shift_factor'])
  if cfg.get('latents_mean') is not None:
    out['latent_mean'] = [float(v) for v in cfg['latents_mean']]
  if cfg.get('latents_std') is not None:
    out['latent_std'] = [float(v) for v in cfg['latents_std']]
  return out


def param_path(key: str) -> str:
  """The visgen parameter path of a diffusers state-dict key."""
  *mod, leaf = key.split('.')
  if mod and mod[-1] in _LEGACY_ATTN:
    mod[-1] = _LEGACY_ATTN[mod[-1]]
  if len(mod) >= 2 and mod[-2] == 'to_out' and mod[-1] == '0':
    mod = mod[:-1]
  if leaf == 'weight':
    leaf = 'scale' if 'norm' in mod[-1] else 'kernel'
  elif leaf != 'bias':
    raise KeyError(f'Unexpected diffusers parameter {key!r}.')
  return '/'.join(mod + [leaf])


def convert_autoencoder_kl(arrays: dict[str, np.ndarray],
                           expected: dict[str, Any] | None = None
                           ) -> dict[str, np.ndarray]:
  """diffusers state dict -> {visgen parameter path: array} (a
  `visgen.weights.CONVERTERS`-style function). Kernels are transposed to
  HWIO / (in, out); `expected` (path -> shape-bearing) resolves 1x1-conv
  attention weights of old checkpoints."""
  out = {}
  for key, a in arrays.items():
    path = param_path(key)
    a = np.asarray(a, np.float32)
    if path.endswith('/kernel'):
      want = getattr((expected or {}).get(path), 'shape', None)
      linear = path.split('/')[-2] in ('to_q', 'to_k', 'to_v', 'to_out')
      if a.ndim == 4 and (linear or (want is not None and len(want) == 2)):
        a = a[:, :, 0, 0]
      a = a.transpose(2, 3, 1, 0) if a.ndim == 4 else a.T
    if path in out:
      raise KeyError(f'Two diffusers parameters map to {path!r}.')
    out[path] = np.ascontiguousarray(a)
  return out


def _read(src: str) -> tuple[dict, dict[str, np.ndarray]]:
  return convert.read_model_dir(src, WEIGHTS_FILE, 'diffusers')


def convert_dir(src: str, out: str, *, input_size: int | None = None,
                **unused) -> dict:
  """Converts a diffusers AutoencoderKL or DiTTransformer2DModel directory
  into OUT (see `visgen.convert`); every parameter is checked against the
  port's tree."""
  del unused
  cfg, arrays = _read(src)
  if cfg.get('_class_name') == 'DiTTransformer2DModel':
    from visgen.convert import dit  # pylint: disable=g-import-not-at-top
    return convert.write_checked(
        dit.convert_diffusers(arrays),
        dit.diffusers_config(cfg, input_size=input_size),
        f'{src}/{WEIGHTS_FILE}', out, fmt='diffusers DiTTransformer2DModel')
  model_cfg = model_config(cfg, input_size=input_size)
  expected = convert.expected_params(model_cfg)
  summary = convert.write_checked(
      convert_autoencoder_kl(arrays, expected), model_cfg,
      f'{src}/{WEIGHTS_FILE}', out, fmt='diffusers AutoencoderKL',
      expected=expected)
  from visgen.tasks import autoencoder as ae_task  # pylint: disable=g-import-not-at-top
  with open(os.path.join(summary['out'], ae_task.STATS_FILE), 'w') as f:
    json.dump(latent_stats(cfg), f, indent=1)
  return summary


REFERENCE_HINT = ('pip install torch diffusers (CPU wheels: pip install torch '
                  '--index-url https://download.pytorch.org/whl/cpu); both '
                  'are optional, only --verify and its tests use them')


def verify(src: str, out: str, *, batch: int = 2, seed: int = 0,
           **unused) -> float:
  """Max relative error of the port against diffusers on the same random
  input: max |port - ref| / max |ref| over the posterior mean, logvar and
  the decoded mean (AutoencoderKL), or the output (DiT)."""
  del unused
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import diffusers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'{e}. {REFERENCE_HINT}.') from e
  cfg, _ = _read(src)
  if cfg.get('_class_name') == 'DiTTransformer2DModel':
    return _verify_dit(src, out)
  import jax  # pylint: disable=g-import-not-at-top

  model, model_cfg = convert.load_converted(out)
  s, c = model_cfg['input_size'], model_cfg['in_channels']
  x = np.random.default_rng(seed).uniform(-1, 1, (batch, s, s, c)).astype(
      np.float32)
  ref = diffusers.AutoencoderKL.from_pretrained(src).float().eval()
  with torch.no_grad():
    dist = ref.encode(torch.from_numpy(x.transpose(0, 3, 1, 2))).latent_dist
    dec = ref.decode(dist.mean).sample
  to_nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1)
  want = (to_nhwc(dist.mean), to_nhwc(dist.logvar), to_nhwc(dec))
  mean, logvar = model.encode(jax.numpy.asarray(x))
  got = (mean, logvar, model.decode(mean))
  return max(float(np.max(np.abs(np.asarray(g) - w)) / np.max(np.abs(w)))
             for g, w in zip(got, want))


def _verify_dit(src: str, out: str) -> float:
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import diffusers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'{e}. {REFERENCE_HINT}.') from e
  from visgen.convert import dit  # pylint: disable=g-import-not-at-top

  model, model_cfg = convert.load_converted(out)
  ref = diffusers.DiTTransformer2DModel.from_pretrained(src).float().eval()

  def ref_fn(x, t, y):
    with torch.no_grad():
      return ref(torch.from_numpy(x), timestep=torch.from_numpy(t),
                 class_labels=torch.from_numpy(np.asarray(y)).long()
                 ).sample.numpy()

  return dit.compare(model, ref_fn, model_cfg=model_cfg)
