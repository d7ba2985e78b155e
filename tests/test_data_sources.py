"""Tests for the dataset registry, TFDS sources, transforms and latents."""

import numpy as np
import pytest

import visgen.data
from visgen.data import latents
from visgen.data import pipeline
from visgen.data import skimage_crops
from visgen.data import transforms


def test_registry_names_and_unknown_name():
  for name in ('digits', 'skimage_crops', 'shapes', 'shapes_edit',
               'shapes_video', 'shapes_world', 'moving_digits', 'cifar10',
               'imagenet64', 'imagenet256', 'celeba_hq', 'lsun_bedroom'):
    assert name in visgen.data.names()
  with pytest.raises(ValueError, match='Valid choices: .*shapes'):
    visgen.data.get_source('mnist', split='train')


@pytest.mark.parametrize('name', ['digits', 'skimage_crops', 'shapes',
                                  'shapes_edit', 'shapes_video',
                                  'shapes_world', 'moving_digits'])
def test_embedded_sources_follow_the_contract(name):
  src = visgen.data.get_source(name, split='test')
  ex = src[len(src) - 1]
  assert ex['image'].dtype == np.uint8 and ex['image'].ndim == 3
  if 'label' in ex:
    assert ex['label'].dtype == np.int32
  batch = next(pipeline.make_iterator(src, batch_size=2, seed=0))
  assert batch['image'].shape == (2,) + ex['image'].shape


def test_digits_size_kwarg():
  src = visgen.data.get_source('digits', split='train', size=16)
  assert len(src) == 1500 and src[0]['image'].shape == (16, 16, 1)


def test_skimage_crops_come_from_their_photo():
  src = skimage_crops.SkimageCropsSource(split='test', crop_size=32)
  ex = src[4]
  photo = src.photos[int(ex['label'])]
  # The crop occurs in its photograph (search the exact window).
  win = np.lib.stride_tricks.sliding_window_view(photo, (32, 32, 3))
  hits = np.all(win[..., 0, :, :, :] == ex['image'], axis=(-3, -2, -1))
  assert hits.any()
  assert set(skimage_crops.PHOTOS['train']).isdisjoint(
      skimage_crops.PHOTOS['test'])


def test_adm_center_crop_box_then_crop_exact():
  rng = np.random.default_rng(0)
  blocks = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
  # 256 x 384 made of 16-px blocks; target 64: two BOX halvings (256 -> 128
  # -> 64 since 128 >= 2 * 64), no bicubic change (scale 1), then a centred
  # crop of columns 16..80 of the 64 x 96 result.
  image = np.kron(blocks, np.ones((16, 16, 1), np.uint8))
  out = transforms.adm_center_crop(image, 64)
  want = np.kron(blocks, np.ones((4, 4, 1), np.uint8))[:, 16:80]
  np.testing.assert_array_equal(out, want)


def test_adm_center_crop_bicubic_upscale_shape_and_constant():
  image = np.full((47, 17, 3), 77, np.uint8)
  out = transforms.adm_center_crop(image, 64)
  assert out.shape == (64, 64, 3)
  np.testing.assert_array_equal(out, 77)  # a constant image stays constant


def test_mock_tfds_through_grain():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  with tfds.testing.mock_data(num_examples=6):
    src = visgen.data.get_source('cifar10', split='train')
    assert len(src) == 6
    batch = next(pipeline.make_iterator(src, batch_size=4, seed=0,
                                        flip=True))
    assert batch['image'].shape == (4, 32, 32, 3)
    assert batch['image'].dtype == np.uint8
    assert batch['label'].dtype == np.int32
    assert ((batch['label'] >= 0) & (batch['label'] < 10)).all()
    imnet = visgen.data.get_source('imagenet64', split='test')
    assert imnet[0]['image'].shape == (64, 64, 3)
    assert visgen.data.get_source('celeba_hq', split='train')[0].keys() == {
        'image'}


def test_missing_dataset_error_says_how_to_prepare(tmp_path):
  from visgen.data import tfds_sources  # pylint: disable=g-import-not-at-top

  with pytest.raises(tfds_sources.DatasetNotPreparedError) as e:
    visgen.data.get_source('cifar10', split='train', data_dir=str(tmp_path))
  msg = str(e.value)
  assert f'tfds build cifar10 --data_dir={tmp_path}' in msg
  assert '--file_format=array_record' in msg
  assert 'TFRECORD is not supported' not in msg
  with pytest.raises(tfds_sources.DatasetNotPreparedError) as e:
    visgen.data.get_source('imagenet64', split='train',
                           data_dir=str(tmp_path))
  msg = str(e.value)
  assert 'ILSVRC2012_img_train.tar' in msg
  assert f'--manual_dir={tmp_path}/downloads/manual' in msg


def test_latent_pre_encoding_round_trip(tmp_path):
  src = visgen.data.get_source('digits', split='test')

  def encode(images):  # a toy "autoencoder": 2x2 average pooling
    x = images.astype(np.float32) / 255.0
    return x.reshape(-1, 4, 2, 4, 2, 1).mean(axis=(2, 4))

  n = latents.encode_dataset(src, encode, out_dir=str(tmp_path),
                             batch_size=100)
  assert n == 297
  lat = latents.LatentSource(str(tmp_path))
  assert len(lat) == 297
  item = lat[250]
  np.testing.assert_allclose(item['latent'], encode(src[250]['image'][None])[0],
                             atol=1e-3)  # float16 storage
  assert item['label'] == src[250]['label']
  with pytest.raises(FileNotFoundError, match='encode_dataset'):
    latents.LatentSource(str(tmp_path / 'nothing'))


def test_latents_keep_captions_and_name_their_origin(tmp_path):
  from visgen.data import latents  # pylint: disable=g-import-not-at-top
  from visgen.data import shapes  # pylint: disable=g-import-not-at-top
  heldout = (('red', 'triangle'),)
  src = shapes.ShapesSource(split='train', resolution=8, num_examples=40,
                            heldout=heldout)

  def encode(images):
    return images.astype(np.float32)[:, ::2, ::2, :1] / 255.0

  latents.encode_dataset(src, encode, out_dir=str(tmp_path), batch_size=16,
                         fields=('label', 'caption'),
                         meta=dict(dataset='shapes',
                                   source_options=dict(heldout=heldout)))
  lat = latents.LatentSource(str(tmp_path))
  for i in (0, 17, 39):
    assert str(lat[i]['caption']) == src[i]['caption']
    assert lat[i]['label'] == src[i]['label']
  # The captions are plain strings on disk (no pickles).
  np.load(tmp_path / 'caption.npy', allow_pickle=False)
  # A run on these latents knows they are scenes, and which pairs were
  # held out (text-to-image's grids and prompt accuracy read them).
  config = dict(data=dict(name='latents', path=str(tmp_path)))
  dataset, options = latents.origin(config)
  assert dataset == 'shapes'
  assert [tuple(p) for p in options['heldout']] == list(heldout)
  # An array field cannot be kept: named.
  with pytest.raises(ValueError, match="'edges'"):
    latents.encode_dataset(src, encode, out_dir=str(tmp_path / 'b'),
                           fields=('edges',))
