"""Tests for the dataset preview CLI."""

import os
import subprocess
import sys

import numpy as np
from PIL import Image

import visgen.data
from visgen.data import preview


def test_preview_cli_writes_png(tmp_path):
  out = tmp_path / 'digits.png'
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root)
  proc = subprocess.run(
      [sys.executable, '-m', 'visgen.data.preview', 'digits',
       '--split=test', f'--out={out}'],
      env=env, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  image = np.asarray(Image.open(out))
  # 16 tiles of 8 px upscaled x12 in a 4x4 grid with 2 px gaps.
  assert image.shape == (4 * 98 + 2, 4 * 98 + 2, 3)


def test_preview_scene_rows_and_captions(tmp_path):
  out = tmp_path / 'shapes.png'
  preview.main(['shapes', '--split=test', f'--out={out}', '--num=3',
                '--scale=2'])
  image = np.asarray(Image.open(out))
  assert image.shape[0] == 3 * (64 + 2) + 2
  lines = (tmp_path / 'shapes.txt').read_text().splitlines()
  assert len(lines) == 3
  src = visgen.data.get_source('shapes', split='test')
  for line in lines:
    index, text = line.split('\t')
    assert text.endswith(str(src[int(index)]['caption']))
  # The first panel of the first row is the (upscaled) image itself.
  first = src[int(lines[0].split('\t')[0])]['image']
  np.testing.assert_array_equal(image[2:66:2, 2:66:2], first)


def test_preview_every_embedded_scene_dataset(tmp_path):
  for name in ('shapes_edit', 'shapes_video', 'shapes_world',
               'moving_digits', 'skimage_crops'):
    out = tmp_path / f'{name}.png'
    preview.main([name, f'--out={out}', '--num=2'])
    assert Image.open(out).size[0] > 0
