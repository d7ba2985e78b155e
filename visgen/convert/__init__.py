r"""Importers of published checkpoints into visgen weight files.

  python -m visgen.convert --from=diffusers --src=DIR --out=DIR [--verify]

`--from` names an importer module in `IMPORTERS` (imported on use, so a
listed format costs nothing until asked for). Each importer provides
`convert_dir(src, out, **kw) -> dict` (writes OUT/model.safetensors keyed by
visgen parameter paths, OUT/config.json with the visgen model config, and
whatever else the format carries, e.g. latent statistics) and
`verify(src, out) -> float` (the maximum relative error between the
reference implementation and the port on the same random input; needs the
optional torch extra). A converted directory is used as a frozen component
or a warm start through `frozen_entry(out)`:

  c.frozen.autoencoder = visgen.convert.frozen_entry(OUT)
  # = dict(source='safetensors:OUT/model.safetensors', model={...})

A new format: a module here with those two functions and one line in
`IMPORTERS`.
"""

import json
import os

IMPORTERS = {
    'diffusers': 'visgen.convert.diffusers',  # AutoencoderKL
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
