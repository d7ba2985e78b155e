"""The real (unmocked) TFDS array_record path, without TensorFlow."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from visgen.data import pipeline
from visgen.data import tfds_sources


class VisgenToyImages(tfds.core.GeneratorBasedBuilder):
  """Five 6x6 images; pixel value 10 * i, label i % 3."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(6, 6, 3), dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=3),
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(5)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {'image': np.full((6, 6, 3), 10 * i, np.uint8),
                'label': i % 3}


def test_array_record_dataset_through_source_and_grain(tmp_path,
                                                       monkeypatch):
  VisgenToyImages(data_dir=str(tmp_path),
                  file_format='array_record').download_and_prepare()
  monkeypatch.setitem(tfds_sources.SPECS, 'toy',
                      tfds_sources.TfdsSpec('visgen_toy_images', 4, True))
  src = tfds_sources.TfdsSource('toy', split='train', data_dir=str(tmp_path))
  assert len(src) == 5
  seen = set()
  for i in range(5):
    ex = src[i]
    assert ex['image'].shape == (4, 4, 3)  # ADM crop of a constant image
    value = int(ex['image'][0, 0, 0])
    np.testing.assert_array_equal(ex['image'], value)
    assert ex['label'] == (value // 10) % 3
    seen.add(value)
  assert seen == {0, 10, 20, 30, 40}
  batch = next(pipeline.make_iterator(src, batch_size=5, seed=0,
                                      repeat=False))
  assert sorted(batch['image'][:, 0, 0, 0].tolist()) == [0, 10, 20, 30, 40]


def test_other_format_copy_gets_convert_instructions(tmp_path):
  version_dir = tmp_path / 'cifar10' / '3.0.2'
  version_dir.mkdir(parents=True)
  (version_dir / 'dataset_info.json').write_text('{}')
  msg = tfds_sources.preparation_instructions('cifar10', str(tmp_path))
  assert (f'tfds convert_format --dataset_version_dir={version_dir} '
          '--out_file_format=array_record') in msg


def test_unknown_tfds_backed_name():
  with pytest.raises(ValueError, match='cifar10'):
    tfds_sources.TfdsSource('cifar100', split='train')
