"""Image splits of registered datasets, as uint8 arrays, for evaluation.

Uses `visgen.data.get_source(name, split=...)` when the data package provides
it (any object with `len` and `[i] -> dict(image=..., label=...)`), and the
embedded sources directly otherwise: digits through
`visgen.data.digits.load_digits_split`, shapes through
`visgen.data.shapes.ShapesSource`.
"""

import numpy as np

from visgen import data as vdata


def load_images(
    dataset: str,
    *,
    split: str,
    size: int | None = None,
    num_examples: int | None = None,
) -> dict[str, np.ndarray]:
  """Returns dict(image=uint8 (N, H, W, C)[, label=int32 (N,)])."""
  if dataset == 'digits':
    from visgen.data import digits  # pylint: disable=g-import-not-at-top

    out = dict(digits.load_digits_split(split, size=size or 8))
    if num_examples is not None:
      out = {k: v[:num_examples] for k, v in out.items()}
    return out
  if dataset == 'shapes':
    from visgen.data import shapes  # pylint: disable=g-import-not-at-top

    source = shapes.ShapesSource(split=split, resolution=size or 32)
  elif hasattr(vdata, 'get_source'):
    kwargs = {} if size is None else dict(resolution=size)
    source = vdata.get_source(dataset, split=split, **kwargs)
  else:
    raise ValueError(
        f'Unknown dataset {dataset!r}. Valid choices: digits, shapes.'
    )
  n = len(source) if num_examples is None else min(num_examples, len(source))
  examples = [source[i] for i in range(n)]
  out = dict(image=np.stack([np.asarray(e['image']) for e in examples]))
  if 'label' in examples[0]:
    out['label'] = np.array([e['label'] for e in examples], np.int32)
  if 'attributes' in examples[0] and dataset == 'shapes':
    out['objects'] = np.stack([e['objects'] for e in examples])
  return out
