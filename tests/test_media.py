"""Media writers: image grids, condition | sample panels, GIF, .npz/.npy."""

import numpy as np
from PIL import Image
import pytest

from visgen import media


def _images(n, h=4, w=5, c=3, start=0):
  return (np.arange(n * h * w * c) + start).reshape(n, h, w, c).astype(
      np.uint8)


def test_grid_tiles_row_major_with_grey_gaps():
  m = media.Media(_images(6), rows=2)
  g = media.grid(m)
  assert g.shape == (2 * 5 - 1, 3 * 6 - 1, 3)
  np.testing.assert_array_equal(g[:4, :5], m.samples[0])
  np.testing.assert_array_equal(g[5:, 6:11], m.samples[4])  # row 1, col 1
  assert np.all(g[4, :] == 128) and np.all(g[:, 5] == 128)


def test_condition_sample_panels_side_by_side():
  cond = _images(2, c=1, start=7)  # grey control maps beside RGB samples
  m = media.Media(_images(2), condition=cond, rows=1)
  g = media.grid(m)
  assert g.shape == (4, 2 * (5 + 1 + 5) + 1, 3)
  np.testing.assert_array_equal(g[:, :5], np.repeat(cond[0], 3, -1))
  assert np.all(g[:, 5] == 128)
  np.testing.assert_array_equal(g[:, 6:11], m.samples[0])


def test_video_gif_and_npz_round_trip(tmp_path):
  video = np.stack([_images(3, start=10 * t) for t in range(4)], axis=1)
  m = media.Media(video, kind='video', labels=np.array([2, 0, 1]))
  paths = media.write_samples(str(tmp_path / 's'), m, upscale=2)
  assert [p[-4:] for p in paths] == ['.npz', '.gif']
  with Image.open(paths[1]) as gif:
    assert gif.n_frames == 4
    assert gif.size == (5 * 2, (3 * 5 - 1) * 2)  # one row per class
  with np.load(paths[0]) as f:
    np.testing.assert_array_equal(f['arr_0'], video)
    np.testing.assert_array_equal(f['arr_1'], [2, 0, 1])
  npy = media.write_npy(str(tmp_path / 'v.npy'), m)
  np.testing.assert_array_equal(np.load(npy), video)


def test_preview_keeps_a_few_per_class_and_concat_keeps_labels():
  labels = np.array([0, 1, 0, 1, 0, 1, 2, 2])
  m = media.Media(_images(8), labels=labels)
  p = media.preview(m, per_row=2)
  np.testing.assert_array_equal(p.labels, [0, 0, 1, 1, 2, 2])
  assert p.rows == 3
  both = media.concat([m.select(slice(0, 3)), m.select(slice(3, 8))])
  np.testing.assert_array_equal(both.labels, labels)
  np.testing.assert_array_equal(both.samples, m.samples)


def test_bad_media_say_what_they_need():
  with pytest.raises(ValueError, match='image media need uint8 samples of '
                     'rank 4'):
    media.Media(np.zeros((2, 4, 4, 3), np.float32))
  with pytest.raises(ValueError, match='Valid choices: image, video, array'):
    media.Media(np.zeros((2,)), kind='audio')
  with pytest.raises(ValueError, match='no image grid'):
    media.grid(media.Media(np.zeros((2, 3)), kind='array'))
