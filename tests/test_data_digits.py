"""Tests for the embedded digits source and the pixel conventions."""

import numpy as np
import pytest

from visgen.data import digits
from visgen.data import preprocess


def test_split_sizes_disjoint_and_fixed():
  train = digits.load_digits_split('train')
  test = digits.load_digits_split('test')
  assert train['image'].shape == (1500, 8, 8, 1)
  assert test['image'].shape == (297, 8, 8, 1)
  assert train['image'].dtype == np.uint8
  assert train['label'].dtype == np.int32
  # The split is the rng(0) permutation of sklearn's order.
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  raw = datasets.load_digits()
  perm = np.random.default_rng(0).permutation(1797)
  np.testing.assert_array_equal(train['label'], raw.target[perm[:1500]])
  np.testing.assert_array_equal(test['label'], raw.target[perm[1500:]])
  expected = np.round(raw.images[perm[1500:]] * 255 / 16).astype(np.uint8)
  np.testing.assert_array_equal(test['image'][..., 0], expected)
  assert train['image'].max() == 255 and train['image'].min() == 0


def test_resize_16():
  small = digits.load_digits_split('test')['image']
  big = digits.load_digits_split('test', size=16)['image']
  assert big.shape == (297, 16, 16, 1) and big.dtype == np.uint8
  # Bilinear upsampling keeps the overall brightness close to the original.
  np.testing.assert_allclose(
      big.mean(axis=(1, 2, 3)), small.mean(axis=(1, 2, 3)), atol=12
  )


def test_unknown_split():
  with pytest.raises(ValueError, match='train, test'):
    digits.load_digits_split('validation')


def test_to_float_to_uint8_round_trip():
  u = np.arange(256, dtype=np.uint8)
  x = preprocess.to_float(u)
  assert x.dtype == np.float32
  assert x[0] == -1.0 and x[-1] == 1.0
  np.testing.assert_array_equal(preprocess.to_uint8(x), u)
  np.testing.assert_array_equal(
      preprocess.to_uint8(np.array([-3.0, 0.0, 5.0])), [0, 128, 255]
  )
