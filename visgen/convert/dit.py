r"""DiT checkpoints -> visgen `dit` (visgen.models.dit).

Two layouts of the same network (Peebles & Xie, 2023):

* facebookresearch/DiT `.pt` files (`python -m visgen.convert --from=dit
  --src=DiT-XL-2-256x256.pt --out=DIR`): the state dict of its `models.DiT`
  (or a train.py checkpoint, whose 'ema' weights are taken), read without
  torch (`visgen.weights.read_torch_pt`). The config is read off the
  shapes: width, patch, input channels, depth, classes, learned sigma and
  the token grid (input_size = grid x patch); the head count is not in the
  file and comes from the paper's table by width (S 6, B 12, L/XL 16) or
  `--heads`.
* diffusers `DiTTransformer2DModel` directories (`--from=diffusers`, see
  `visgen.convert.diffusers`), whose per-block copies of the timestep and
  class embedders must be equal (they are in every converted DiT; the port
  has one), and whose two constants differ from the paper's code:
  timestep frequencies 10000^(-i/(half-1)) (`t_freq_shift=1`) and the
  feed-forward LayerNorm's eps (`mlp_norm_eps`, 1e-5 by default).

Name map (PyTorch Linear (out, in) -> kernel (in, out)):

  x_embedder.proj (conv p x p)  | pos_embed.proj      -> x_embed (p*p*C, D)
  t_embedder.mlp.0 / .2         | *.timestep_embedder.linear_1 / _2
                                                      -> t_embed/fc1, fc2
  y_embedder.embedding_table    | *.class_embedder.embedding_table
                                                      -> y_embed/table
  blocks.i.attn.qkv             | attn1.to_q, to_k, to_v (concatenated)
                                                      -> blocks/i/attn/qkv
  blocks.i.attn.proj            | attn1.to_out.0      -> blocks/i/attn/proj
  blocks.i.mlp.fc1 / fc2        | ff.net.0.proj / ff.net.2 -> fc1 / fc2
  blocks.i.adaLN_modulation.1   | norm1.linear        -> blocks/i/ada
  final_layer.adaLN_modulation.1 | proj_out_1         -> final_ada
  final_layer.linear            | proj_out_2          -> final

visgen's DiT reads t in [0, 1] scaled by t_scale=1000: the reference's
timestep k is t = k / 1000 here.
"""

import os
from typing import Any

import numpy as np

from visgen import convert
from visgen import weights as weights_lib

# The DiT paper's heads by width (Table 1).
HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1152: 16}


def _t(a) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(a, np.float32).T)


def _f(a) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(a, np.float32))


def patch_kernel(w_OxCxPxP) -> np.ndarray:
  """A p x p stride-p conv weight (O, C, p, p) -> the port's patch-token
  kernel (p*p*C, O): tokens are flattened (row, column, channel)."""
  w = np.asarray(w_OxCxPxP, np.float32)
  o = w.shape[0]
  return np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(-1, o))


def _heads(width: int, heads: int | None) -> int:
  if heads:
    return int(heads)
  if width not in HEADS_BY_WIDTH:
    raise ValueError(
        f'DiT width {width} is not one of the paper\'s '
        f'({sorted(HEADS_BY_WIDTH)}); the head count is not stored in the '
        'file: pass --heads=N.')
  return HEADS_BY_WIDTH[width]


def _depth(keys, prefix: str) -> int:
  idx = {int(k[len(prefix):].split('.')[0]) for k in keys
         if k.startswith(prefix)}
  if not idx:
    raise KeyError(f'no {prefix}<i>.* parameters: not a DiT state dict.')
  return max(idx) + 1


# -- facebookresearch/DiT -----------------------------------------------------


def facebook_state_dict(obj: Any, src: str) -> dict[str, np.ndarray]:
  """The state dict of a loaded .pt (a plain state dict, or a train.py
  checkpoint: its 'ema', else 'model')."""
  if isinstance(obj, dict):
    for key in ('ema', 'model'):
      if key in obj and isinstance(obj[key], dict):
        return dict(obj[key])
    if 'x_embedder.proj.weight' in obj:
      return dict(obj)
  raise KeyError(f'{src} holds no DiT state dict (no x_embedder.proj.weight, '
                 "'ema' or 'model' entry).")


def facebook_config(sd: dict, *, heads: int | None = None,
                    input_size: int | None = None) -> dict:
  """The visgen model config of a facebookresearch/DiT state dict."""
  w = sd['x_embedder.proj.weight']
  width, cin, p = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
  n = int(sd['pos_embed'].shape[1]) if 'pos_embed' in sd else None
  grid = int(round(n ** 0.5)) if n else None
  if input_size is None:
    if not grid or grid * grid != n:
      raise ValueError('cannot read the token grid off pos_embed: pass '
                       '--input_size (the latent side, e.g. 32 for 256px).')
    input_size = grid * p
  out = int(sd['final_layer.linear.weight'].shape[0]) // (p * p)
  if out not in (cin, 2 * cin):
    raise ValueError(f'final layer has {out} channels for {cin} inputs.')
  table = sd.get('y_embedder.embedding_table.weight')
  return dict(name='dit', input_size=int(input_size), in_channels=cin,
              patch=p, variant=None, width=width,
              depth=_depth(sd, 'blocks.'), heads=_heads(width, heads),
              mlp_ratio=float(sd['blocks.0.mlp.fc1.weight'].shape[0]) / width,
              num_classes=0 if table is None else int(table.shape[0]) - 1,
              learn_sigma=out == 2 * cin, dtype='float32')


def convert_facebook(sd: dict) -> dict[str, np.ndarray]:
  """facebookresearch/DiT state dict -> {visgen parameter path: array}."""
  out = {'x_embed/kernel': patch_kernel(sd['x_embedder.proj.weight']),
         'x_embed/bias': _f(sd['x_embedder.proj.bias'])}
  for i, name in ((0, 'fc1'), (2, 'fc2')):
    out[f't_embed/{name}/kernel'] = _t(sd[f't_embedder.mlp.{i}.weight'])
    out[f't_embed/{name}/bias'] = _f(sd[f't_embedder.mlp.{i}.bias'])
  if 'y_embedder.embedding_table.weight' in sd:
    out['y_embed/table'] = _f(sd['y_embedder.embedding_table.weight'])
  for i in range(_depth(sd, 'blocks.')):
    src, dst = f'blocks.{i}.', f'blocks/{i}/'
    for a, b in (('attn.qkv', 'attn/qkv'), ('attn.proj', 'attn/proj'),
                 ('mlp.fc1', 'fc1'), ('mlp.fc2', 'fc2'),
                 ('adaLN_modulation.1', 'ada')):
      out[f'{dst}{b}/kernel'] = _t(sd[f'{src}{a}.weight'])
      out[f'{dst}{b}/bias'] = _f(sd[f'{src}{a}.bias'])
  for a, b in (('final_layer.adaLN_modulation.1', 'final_ada'),
               ('final_layer.linear', 'final')):
    out[f'{b}/kernel'] = _t(sd[f'{a}.weight'])
    out[f'{b}/bias'] = _f(sd[f'{a}.bias'])
  return out


def check_pos_embed(sd: dict, model_cfg: dict, src: str) -> None:
  """The file's fixed position embedding is the port's (which recomputes
  it): a ValueError otherwise (e.g. an interpolated grid)."""
  if 'pos_embed' not in sd:
    return
  from visgen.models import dit  # pylint: disable=g-import-not-at-top
  g = model_cfg['input_size'] // model_cfg['patch']
  want = dit.pos_embed_2d(model_cfg['width'], g, g)
  got = np.asarray(sd['pos_embed'], np.float32).reshape(want.shape)
  err = float(np.max(np.abs(got - want)))
  if err > 1e-4:
    raise ValueError(f'{src}: pos_embed differs from the sin-cos grid the '
                     f'port computes (max error {err:.3g}); it is not '
                     'converted.')


# -- diffusers DiTTransformer2DModel ------------------------------------------


def diffusers_config(cfg: dict, *, input_size: int | None = None) -> dict:
  """The visgen model config of a diffusers DiTTransformer2DModel."""
  if cfg.get('norm_type', 'ada_norm_zero') != 'ada_norm_zero':
    raise ValueError(f'norm_type {cfg["norm_type"]!r}: only ada_norm_zero '
                     '(DiT) is converted.')
  if cfg.get('activation_fn', 'gelu-approximate') != 'gelu-approximate':
    raise ValueError(f'activation_fn {cfg["activation_fn"]!r} is not '
                     'supported (gelu-approximate).')
  if cfg.get('norm_elementwise_affine', False):
    raise ValueError('norm_elementwise_affine=True is not supported.')
  heads = int(cfg.get('num_attention_heads', 16))
  width = heads * int(cfg.get('attention_head_dim', 72))
  cin = int(cfg.get('in_channels', 4))
  cout = cfg.get('out_channels') or cin
  if cout not in (cin, 2 * cin):
    raise ValueError(f'out_channels {cout} for in_channels {cin}: only C '
                     'or 2C (learned sigma) are supported.')
  sample = int(cfg.get('sample_size', 32))
  if max(sample // 64, 1) != 1:
    raise ValueError(f'sample_size {sample}: diffusers interpolates the '
                     'position grid for sample_size >= 128; not supported.')
  return dict(name='dit', input_size=int(input_size or sample),
              in_channels=cin, patch=int(cfg.get('patch_size', 2)),
              variant=None, width=width,
              depth=int(cfg.get('num_layers', 28)), heads=heads,
              mlp_ratio=4.0,
              num_classes=int(cfg.get('num_embeds_ada_norm') or 0),
              learn_sigma=cout == 2 * cin, t_freq_shift=1.0,
              mlp_norm_eps=float(cfg.get('norm_eps', 1e-5)),
              dtype='float32')


def convert_diffusers(sd: dict) -> dict[str, np.ndarray]:
  """diffusers DiTTransformer2DModel state dict -> {visgen path: array}."""
  depth = _depth(sd, 'transformer_blocks.')
  out = {'x_embed/kernel': patch_kernel(sd['pos_embed.proj.weight']),
         'x_embed/bias': _f(sd['pos_embed.proj.bias'])}
  emb = 'transformer_blocks.{}.norm1.emb.'
  shared = {'timestep_embedder.linear_1.weight': 't_embed/fc1/kernel',
            'timestep_embedder.linear_1.bias': 't_embed/fc1/bias',
            'timestep_embedder.linear_2.weight': 't_embed/fc2/kernel',
            'timestep_embedder.linear_2.bias': 't_embed/fc2/bias',
            'class_embedder.embedding_table.weight': 'y_embed/table'}
  for key, path in shared.items():
    if emb.format(0) + key not in sd:
      continue
    first = np.asarray(sd[emb.format(0) + key], np.float32)
    for i in range(1, depth):
      if not np.array_equal(np.asarray(sd[emb.format(i) + key], np.float32),
                            first):
        raise ValueError(
            f'{emb.format(i)}{key} differs from block 0\'s: this '
            'DiTTransformer2DModel has per-block embedders, the DiT port one '
            'shared embedder (every converted DiT checkpoint has equal '
            'copies).')
    out[path] = _t(first) if path.endswith('kernel') else _f(first)
  for i in range(depth):
    src, dst = f'transformer_blocks.{i}.', f'blocks/{i}/'
    qkv = [sd[f'{src}attn1.to_{n}.weight'] for n in 'qkv']
    out[f'{dst}attn/qkv/kernel'] = _t(np.concatenate(qkv, 0))
    out[f'{dst}attn/qkv/bias'] = _f(np.concatenate(
        [sd[f'{src}attn1.to_{n}.bias'] for n in 'qkv']))
    for a, b in (('attn1.to_out.0', 'attn/proj'), ('ff.net.0.proj', 'fc1'),
                 ('ff.net.2', 'fc2'), ('norm1.linear', 'ada')):
      out[f'{dst}{b}/kernel'] = _t(sd[f'{src}{a}.weight'])
      out[f'{dst}{b}/bias'] = _f(sd[f'{src}{a}.bias'])
  for a, b in (('proj_out_1', 'final_ada'), ('proj_out_2', 'final')):
    out[f'{b}/kernel'] = _t(sd[f'{a}.weight'])
    out[f'{b}/bias'] = _f(sd[f'{a}.bias'])
  return out


# -- Shared -------------------------------------------------------------------


def convert_dir(src: str, out: str, *, input_size: int | None = None,
                heads: int | None = None, **unused) -> dict:
  """facebookresearch/DiT .pt file -> OUT."""
  del unused
  src = os.path.expanduser(src)
  if os.path.isdir(src):
    pts = sorted(f for f in os.listdir(src) if f.endswith('.pt'))
    if len(pts) != 1:
      raise FileNotFoundError(f'{src}: expected one .pt file, found '
                              f'{pts or "none"}; pass --src=FILE.pt.')
    src = os.path.join(src, pts[0])
  sd = facebook_state_dict(weights_lib.read_torch_pt(src, what='--src'), src)
  model_cfg = facebook_config(sd, heads=heads, input_size=input_size)
  check_pos_embed(sd, model_cfg, src)
  return convert.write_checked(convert_facebook(sd), model_cfg, src, out,
                               fmt='facebookresearch/DiT')


def compare(model, ref_fn, *, model_cfg: dict, batch: int = 2,
            seed: int = 0) -> float:
  """max |port - ref| / max |ref| on random latents, timesteps in
  [0, 1000) and labels (incl. the null class); ref_fn(x NCHW, t, y) -> NCHW
  numpy."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  s, c = model_cfg['input_size'], model_cfg['in_channels']
  x = rng.standard_normal((batch, s, s, c)).astype(np.float32)
  t = rng.integers(0, 1000, (batch,)).astype(np.float32)
  nc = model_cfg.get('num_classes') or 0
  y = rng.integers(0, nc + 1, (batch,)) if nc else None
  want = ref_fn(x.transpose(0, 3, 1, 2), t, y).transpose(0, 2, 3, 1)
  cond = {'label': jnp.asarray(y)} if nc else None
  got = np.asarray(model(jnp.asarray(x), jnp.asarray(t / 1000.0), cond))
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def verify(src: str, out: str, *, reference: str | None = None,
           **unused) -> float:
  """Max relative error of the port against facebookresearch/DiT's own
  `models.DiT` (a clone of the repository: --reference=DIR or
  $DIT_REPO; needs torch and timm)."""
  del unused
  import sys  # pylint: disable=g-import-not-at-top
  repo = reference or os.environ.get('DIT_REPO')
  if not repo or not os.path.isfile(os.path.join(repo, 'models.py')):
    raise ImportError(
        'the reference is facebookresearch/DiT\'s models.py: clone '
        'https://github.com/facebookresearch/DiT and pass --reference=DIR '
        '(or set DIT_REPO); it needs torch and timm (pip install torch timm)')
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'{e}: pip install torch timm') from e
  sys.path.insert(0, repo)
  try:
    import models as dit_models  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(repo)
  model, model_cfg = convert.load_converted(out)
  ref = dit_models.DiT(
      input_size=model_cfg['input_size'], patch_size=model_cfg['patch'],
      in_channels=model_cfg['in_channels'], hidden_size=model_cfg['width'],
      depth=model_cfg['depth'], num_heads=model_cfg['heads'],
      mlp_ratio=model_cfg['mlp_ratio'],
      num_classes=max(model_cfg['num_classes'], 1),
      learn_sigma=model_cfg['learn_sigma'])
  path = os.path.expanduser(src)
  if os.path.isdir(path):
    path = os.path.join(path, [f for f in os.listdir(path)
                               if f.endswith('.pt')][0])
  sd = torch.load(path, map_location='cpu', weights_only=False)
  sd = sd.get('ema', sd.get('model', sd)) if 'x_embedder.proj.weight' not in (
      sd) else sd
  ref.load_state_dict(sd)
  ref.eval()

  def ref_fn(x, t, y):
    with torch.no_grad():
      yy = torch.zeros(len(t), dtype=torch.long) if y is None else (
          torch.from_numpy(np.asarray(y)).long())
      return ref(torch.from_numpy(x), torch.from_numpy(t), yy).numpy()

  return compare(model, ref_fn, model_cfg=model_cfg)
