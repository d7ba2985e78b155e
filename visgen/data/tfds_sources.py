"""Real datasets through TFDS `data_source` (ArrayRecord), without TensorFlow.

`tfds.data_source` reads datasets that were prepared in the array_record (or
parquet) file format; preparing them needs TensorFlow and, for ImageNet and
CelebA-HQ, a manual download. This module maps visgen names to TFDS names,
applies the resolution policy (ADM centre crop for ImageNet and LSUN), and
turns tfds's misleading "FileFormat.TFRECORD is not supported" failure into a
`DatasetNotPreparedError` that says exactly how to prepare the data.

The data directory is `data_dir` (the configs' `data.data_dir`, '' for the
default), else $TFDS_DATA_DIR, else ~/tensorflow_datasets (tfds's own
default).
"""

import dataclasses
import os

import numpy as np

from visgen.data import transforms


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
  """How a visgen dataset name maps onto a TFDS dataset."""

  tfds_name: str
  image_size: int | None = None  # None: keep native size (must be fixed)
  adm_crop: bool = False  # ADM centre crop to image_size
  has_label: bool = True
  # visgen split name -> TFDS split name; others are passed through.
  split_alias: tuple[tuple[str, str], ...] = ()
  manual: bool = False


SPECS = {
    'cifar10': TfdsSpec('cifar10'),
    'imagenet64': TfdsSpec('imagenet2012', 64, True,
                           split_alias=(('test', 'validation'),),
                           manual=True),
    'imagenet256': TfdsSpec('imagenet2012', 256, True,
                            split_alias=(('test', 'validation'),),
                            manual=True),
    'celeba_hq': TfdsSpec('celeb_a_hq/256', 256, False, has_label=False,
                          manual=True),
    'lsun_bedroom': TfdsSpec('lsun/bedroom', 256, True, has_label=False,
                             split_alias=(('test', 'validation'),)),
    'lsun_church': TfdsSpec('lsun/church_outdoor', 256, True,
                            has_label=False,
                            split_alias=(('test', 'validation'),)),
}


class DatasetNotPreparedError(FileNotFoundError):
  """A TFDS dataset is missing, or prepared in a format grain cannot read."""


def resolve_data_dir(data_dir: str | None) -> str:
  if data_dir:
    return os.path.expanduser(str(data_dir))
  return os.path.expanduser(
      os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets'))


def preparation_instructions(tfds_name: str, data_dir: str) -> str:
  """The exact steps to make `tfds_name` readable by `tfds.data_source`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  base = tfds_name.split('/')[0]
  manual = getattr(tfds.builder_cls(base), 'MANUAL_DOWNLOAD_INSTRUCTIONS',
                   None)
  manual_dir = os.path.join(data_dir, 'downloads', 'manual')
  lines = [
      'Prepare it once, on a machine with network access and TensorFlow '
      '(pip install tensorflow tensorflow-datasets):',
  ]
  if manual:
    lines += [
        f'  1. Manual download into the manual_dir {manual_dir}:',
        *['     ' + ln.strip() for ln in manual.strip().splitlines()],
        f'  2. tfds build {tfds_name} --data_dir={data_dir} '
        f'--manual_dir={manual_dir} --file_format=array_record',
    ]
  else:
    lines.append(f'  tfds build {tfds_name} --data_dir={data_dir} '
                 '--file_format=array_record')
  lines.append(
      f'then copy {os.path.join(data_dir, base)} to this machine and pass '
      'its parent folder as --config.data.data_dir=DIR (or set '
      'TFDS_DATA_DIR=DIR).')
  existing = _prepared_versions(tfds_name, data_dir)
  if existing:
    lines.append(
        f'A copy exists at {existing[0]} in another file format (tfrecord?): '
        'convert it instead of rebuilding: tfds convert_format '
        f'--dataset_version_dir={existing[0]} --out_file_format=array_record')
  return '\n'.join(lines)


def _prepared_versions(tfds_name: str, data_dir: str) -> list[str]:
  """Version dirs of `tfds_name` under data_dir holding a dataset_info.json."""
  root = os.path.join(data_dir, tfds_name)
  if not os.path.isdir(root):
    return []
  return sorted(
      os.path.join(root, v) for v in os.listdir(root)
      if os.path.exists(os.path.join(root, v, 'dataset_info.json')))


def open_data_source(tfds_name: str, *, split: str,
                     data_dir: str | None = None):
  """`tfds.data_source` with download disabled and a useful error."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  data_dir = resolve_data_dir(data_dir)
  try:
    return tfds.data_source(tfds_name, split=split, data_dir=data_dir,
                            download=False)
  except (NotImplementedError, FileNotFoundError, AssertionError,
          tfds.core.registered.DatasetNotFoundError) as e:
    if isinstance(e, tfds.core.registered.DatasetNotFoundError):
      raise ValueError(f'TFDS has no dataset {tfds_name!r}: {e}') from e
    raise DatasetNotPreparedError(
        f'TFDS dataset {tfds_name!r} (split {split!r}) is not prepared in '
        f'the array_record format under data_dir={data_dir!r}.\n'
        + preparation_instructions(tfds_name, data_dir)
    ) from e


class TfdsSource:
  """Random-access source over a prepared TFDS dataset.

  Items: 'image' uint8 (S, S, 3) (ADM centre-cropped where the spec says so),
  'label' int32 where the dataset has labels.

  Args:
    name: a key of SPECS ('cifar10', 'imagenet64', ...).
    split: 'train', 'test' (aliased to 'validation' where TFDS names it so)
      or any TFDS split string such as 'train[:1%]'.
    data_dir: TFDS data directory (default $TFDS_DATA_DIR or
      ~/tensorflow_datasets).
    image_size: override the spec's output size (ADM crop or check).
  """

  def __init__(self, name: str, *, split: str, data_dir: str | None = None,
               image_size: int | None = None):
    if name not in SPECS:
      raise ValueError(f'Unknown TFDS-backed dataset {name!r}. Valid '
                       f'choices: {", ".join(sorted(SPECS))}.')
    self.spec = SPECS[name]
    self.image_size = image_size or self.spec.image_size
    tfds_split = dict(self.spec.split_alias).get(split, split)
    self._source = open_data_source(self.spec.tfds_name, split=tfds_split,
                                    data_dir=data_dir)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    ex = self._source[int(index)]
    image = np.asarray(ex['image'], np.uint8)
    if image.ndim == 2:
      image = image[..., None]
    if self.image_size is not None and (
        self.spec.adm_crop or image.shape[:2] != (self.image_size,) * 2):
      image = transforms.adm_center_crop(image, self.image_size)
    out = dict(image=np.ascontiguousarray(image))
    if self.spec.has_label:
      out['label'] = np.int32(ex['label'])
    return out
