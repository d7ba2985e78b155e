"""Image splits of registered datasets, as uint8 arrays, for evaluation.

Any source of `visgen.data.get_source(name, split=...)` works (an object with
`len` and `[i] -> dict(image=uint8 HWC, label=...)`); digits are read as
whole arrays through `visgen.data.digits.load_digits_split`. The resolution
keyword differs per source: `size` (digits), `image_size` (TFDS sources),
`resolution` (procedural sources).
"""

import numpy as np

from visgen import data as vdata

_TFDS = ('cifar10', 'imagenet64', 'imagenet256', 'celeba_hq', 'lsun_bedroom',
         'lsun_church')


def _size_kwargs(dataset: str, size: int | None) -> dict:
  if size is None:
    return {}
  if dataset in _TFDS:
    return dict(image_size=size)
  return dict(resolution=size)


def load_images(
    dataset: str,
    *,
    split: str,
    size: int | None = None,
    num_examples: int | None = None,
) -> dict[str, np.ndarray]:
  """Returns dict(image=uint8 (N, H, W, C)[, label=int32][, objects])."""
  if dataset == 'digits':
    from visgen.data import digits  # pylint: disable=g-import-not-at-top

    out = dict(digits.load_digits_split(split, size=size or 8))
    if num_examples is not None:
      out = {k: v[:num_examples] for k, v in out.items()}
    return out
  source = vdata.get_source(dataset, split=split,
                            **_size_kwargs(dataset, size))
  n = len(source) if num_examples is None else min(num_examples, len(source))
  examples = [source[i] for i in range(n)]
  out = dict(image=np.stack([np.asarray(e['image']) for e in examples]))
  if 'label' in examples[0]:
    out['label'] = np.array([e['label'] for e in examples], np.int32)
  if 'objects' in examples[0]:  # shapes: targets of the attribute net
    out['objects'] = np.stack([e['objects'] for e in examples])
  return out
