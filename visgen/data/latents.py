"""The seam for latent diffusion: pre-encode a dataset once, train on latents.

Once an autoencoder exists, a command such as

  python -m visgen.data.latents --dataset=imagenet256 --split=train \
      --autoencoder=<checkpoint> --out=DIR

will call `encode_dataset(get_source(...), encode_fn, out_dir=DIR)` with
`encode_fn` = the autoencoder's (jitted) encoder, and training will read
`LatentSource(DIR)` instead of images. Only the autoencoder-specific part (the
CLI flags that build `encode_fn`) is missing; the storage format and reader
below are complete and tested with a toy encoder.

Format in `out_dir`: 'latents.npy' (N, h, w, c) float16 (read with mmap),
'labels.npy' int32 (N,) when the source has labels, 'meta.json'.
"""

import json
import os

import numpy as np


def encode_dataset(source, encode_fn, *, out_dir: str,
                   batch_size: int = 256, meta: dict | None = None) -> int:
  """Encodes every example of `source` in order; returns the count.

  Args:
    source: random-access source yielding 'image' uint8 HWC (+ 'label').
    encode_fn: maps a uint8 (B, H, W, C) batch to latents (B, h, w, c).
    out_dir: output directory (created).
    batch_size: encoder batch size (the last batch may be smaller).
    meta: extra metadata stored in meta.json (e.g. autoencoder name, scale).
  """
  os.makedirs(out_dir, exist_ok=True)
  n = len(source)
  latents = labels = None
  for start in range(0, n, batch_size):
    items = [source[i] for i in range(start, min(n, start + batch_size))]
    z = np.asarray(encode_fn(np.stack([it['image'] for it in items])))
    if latents is None:
      latents = np.lib.format.open_memmap(
          os.path.join(out_dir, 'latents.npy'), mode='w+',
          dtype=np.float16, shape=(n,) + z.shape[1:])
      if 'label' in items[0]:
        labels = np.zeros((n,), np.int32)
    latents[start:start + len(items)] = z
    if labels is not None:
      labels[start:start + len(items)] = [it['label'] for it in items]
  latents.flush()
  if labels is not None:
    np.save(os.path.join(out_dir, 'labels.npy'), labels)
  with open(os.path.join(out_dir, 'meta.json'), 'w') as f:
    json.dump(dict(num_examples=n, latent_shape=list(latents.shape[1:]),
                   **(meta or {})), f)
  return n


class LatentSource:
  """Random-access reader of `encode_dataset` output.

  Items: 'latent' float32 (h, w, c) and 'label' int32 when stored. (Latent
  sources carry no 'image'; decode with the autoencoder for previews.)
  """

  def __init__(self, path: str):
    if not os.path.exists(os.path.join(path, 'meta.json')):
      raise FileNotFoundError(
          f'No pre-encoded latents in {path!r}: run encode_dataset (see the '
          'visgen.data.latents module docstring) first.')
    self.latents = np.load(os.path.join(path, 'latents.npy'), mmap_mode='r')
    label_path = os.path.join(path, 'labels.npy')
    self.labels = np.load(label_path) if os.path.exists(label_path) else None

  def __len__(self) -> int:
    return self.latents.shape[0]

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    out = dict(latent=np.asarray(self.latents[int(index)], np.float32))
    if self.labels is not None:
      out['label'] = self.labels[int(index)]
    return out
