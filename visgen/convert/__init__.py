r"""Importers of published checkpoints into visgen weight files.

  python -m visgen.convert --from=diffusers --src=DIR --out=DIR [--verify]
  python -m visgen.convert --from=transformers --src=DIR --out=DIR [--verify]
  python -m visgen.convert --from=dit --src=DiT-XL-2-256x256.pt --out=DIR

`--from` names an importer module in `IMPORTERS` (imported on use, so a
listed format costs nothing until asked for). Each importer provides
`convert_dir(src, out, **kw) -> dict` (writes OUT/model.safetensors keyed by
visgen parameter paths, OUT/config.json with the visgen model config, and
whatever else the format carries, e.g. latent statistics) and
`verify(src, out) -> float` (the maximum relative error between the
reference implementation and the port on the same random input; needs the
optional torch extra and the reference library). `expected_params`,
`write_converted` and `load_converted` are the importers' shared steps. A converted directory is used as a frozen component
or a warm start through `frozen_entry(out)`:

  c.frozen.autoencoder = visgen.convert.frozen_entry(OUT)
  # = dict(source='safetensors:OUT/model.safetensors', model={...})

A new format: a module here with those two functions and one line in
`IMPORTERS`.
"""

import json
import os

IMPORTERS = {
    # AutoencoderKL, DiTTransformer2DModel directories
    'diffusers': 'visgen.convert.diffusers',
    # BertModel (MiniLM), CLIPTextModel directories
    'transformers': 'visgen.convert.transformers',
    # facebookresearch/DiT .pt state dicts
    'dit': 'visgen.convert.dit',
}

MODEL_FILE = 'model.safetensors'


def frozen_entry(out_dir: str) -> dict:
  """`config.frozen.<name>` for a converted directory."""
  out_dir = os.path.expanduser(out_dir)
  path = os.path.join(out_dir, 'config.json')
  try:
    with open(path) as f:
      model = json.load(f)['model']
  except (OSError, ValueError, KeyError) as e:
    raise FileNotFoundError(
        f'{out_dir} is no converted checkpoint ({path}: {e}); run python -m '
        'visgen.convert --from=... --src=... --out=DIR first.') from e
  return dict(source='safetensors:' + os.path.join(out_dir, MODEL_FILE),
              model=model)


def expected_params(model_cfg: dict) -> dict:
  """{parameter path: ShapeDtypeStruct} of the port `model_cfg` builds."""
  from visgen import frozen as frozen_lib  # pylint: disable=g-import-not-at-top
  from visgen import param_tree  # pylint: disable=g-import-not-at-top

  _, abstract = frozen_lib.abstract_model('converted', model_cfg)
  return param_tree.flatten(abstract)


def write_converted(out: str, flat: dict, model_cfg: dict, *, src: str,
                    fmt: str) -> dict:
  """Writes OUT/model.safetensors + OUT/config.json; the summary dict."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from visgen import weights as weights_lib  # pylint: disable=g-import-not-at-top

  out = os.path.expanduser(out)
  os.makedirs(out, exist_ok=True)
  weights_lib.write_safetensors(os.path.join(out, MODEL_FILE), flat)
  with open(os.path.join(out, 'config.json'), 'w') as f:
    json.dump(dict(model=model_cfg, converted_from=os.path.abspath(src),
                   format=fmt), f, indent=1)
  return dict(out=out, model=model_cfg,
              num_params=int(sum(np.prod(v.shape) for v in flat.values())))


def load_converted(out: str):
  """(the port as an nnx module with the converted weights, model config)."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from visgen import frozen as frozen_lib  # pylint: disable=g-import-not-at-top
  from visgen import param_tree  # pylint: disable=g-import-not-at-top
  from visgen import weights as weights_lib  # pylint: disable=g-import-not-at-top

  entry = frozen_entry(out)
  graphdef, abstract = frozen_lib.abstract_model('converted', entry['model'])
  flat = weights_lib.read_safetensors(entry['source'].split(':', 1)[1])
  params = param_tree.rebuild(abstract, {k: jax.numpy.asarray(v)
                                         for k, v in flat.items()})
  return nnx.merge(graphdef, params), entry['model']


def read_model_dir(src: str, weights_file: str, library: str
                   ) -> tuple[dict, dict]:
  """(config.json, {key: array} of weights_file) of a `library` model
  directory; FileNotFoundError naming what is missing."""
  from visgen import weights as weights_lib  # pylint: disable=g-import-not-at-top

  src = os.path.expanduser(src)
  cfg_path = os.path.join(src, 'config.json')
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f'{cfg_path} not found: --src must be a '
                            f'{library} model directory (config.json + '
                            f'{weights_file}).')
  with open(cfg_path) as f:
    cfg = json.load(f)
  w = os.path.join(src, weights_file)
  if not os.path.isfile(w):
    raise FileNotFoundError(
        f'{w} not found (.bin pickles are not read: save the model with '
        'safe_serialization=True).')
  return cfg, weights_lib.read_safetensors(w)


def write_checked(flat: dict, model_cfg: dict, src: str, out: str, *,
                  fmt: str, expected: dict | None = None) -> dict:
  """Checks `flat` against the port's parameter tree (shapes, and nothing
  extra) and writes OUT (`write_converted`); the summary dict."""
  from visgen import weights as weights_lib  # pylint: disable=g-import-not-at-top

  expected = expected or expected_params(model_cfg)
  weights_lib.check_shapes({k: v.shape for k, v in flat.items()}, expected,
                           origin=src, what=fmt)
  extra = sorted(set(flat) - set(expected))
  if extra:
    raise KeyError(f'{src}: parameters the port does not have: {extra[:8]}.')
  return write_converted(out, {k: flat[k] for k in expected}, model_cfg,
                         src=src, fmt=fmt)
