"""Latent diffusion's data side: pre-encode a dataset once, train on latents.

  python -m visgen.data.latents --autoencoder=AE_WORKDIR --dataset=shapes \
      --split=train --resolution=32 --num_examples=20000 --out=DIR

encodes every example (or the first `num_examples`) with the trained
autoencoder of AE_WORKDIR (a `visgen.main` run of `autoencoder_kl`, e.g.
configs/autoencoder_shapes.py; its EMA weights by default) through
`encode_dataset`, storing the posterior means unscaled; training then reads
`LatentSource(DIR)` (the data source `dict(name='latents', path=DIR)`;
DIR/<split> when present) with `config.task.data_key='latent'` and
`latent_scale` = the stored `latent_scale_factor`. The autoencoder's latent
statistics (SD's scale factor, EDM2's per-channel mean/std, see
`visgen.tasks.autoencoder.latent_stats`) are read from its workdir, or
computed on the first examples encoded and written there as
latent_stats.json, and copied into meta.json. (Encoding inside the train
step instead: `config.frozen` + `config.task.latent`, visgen.tasks.autoencoder.)

Format in `out_dir`: 'latents.npy' (N, h, w, c) float16 (read with mmap),
'labels.npy' int32 (N,) when the source has labels, one '<field>.npy' per
further per-example field kept (`fields`, e.g. 'caption' for text-to-image:
scalars or strings, stored as plain arrays), 'meta.json' (its 'fields'
lists what was kept).
"""

import json
import os

import numpy as np


def _field_file(name: str) -> str:
  return 'labels.npy' if name == 'label' else f'{name}.npy'


def encode_dataset(source, encode_fn, *, out_dir: str,
                   batch_size: int = 256, meta: dict | None = None,
                   fields: tuple[str, ...] = ('label',)) -> int:
  """Encodes every example of `source` in order; returns the count.

  Args:
    source: random-access source yielding 'image' uint8 HWC (+ 'label').
    encode_fn: maps a uint8 (B, H, W, C) batch to latents (B, h, w, c).
    out_dir: output directory (created).
    batch_size: encoder batch size (the last batch may be smaller).
    meta: extra metadata stored in meta.json (e.g. autoencoder name, scale).
    fields: per-example fields kept beside the latents when the source has
      them (scalars or strings, e.g. 'label', 'caption').
  """
  os.makedirs(out_dir, exist_ok=True)
  n = len(source)
  latents = None
  kept: dict[str, list] = {}
  for start in range(0, n, batch_size):
    items = [source[i] for i in range(start, min(n, start + batch_size))]
    z = np.asarray(encode_fn(np.stack([it['image'] for it in items])))
    if latents is None:
      latents = np.lib.format.open_memmap(
          os.path.join(out_dir, 'latents.npy'), mode='w+',
          dtype=np.float16, shape=(n,) + z.shape[1:])
      for name in fields:
        if name in items[0]:
          if np.ndim(items[0][name]):
            raise ValueError(
                f'encode_dataset keeps scalar or string fields; {name!r} '
                f'has shape {np.shape(items[0][name])}. Drop it from '
                '`fields`.')
          kept[name] = []
    latents[start:start + len(items)] = z
    for name, values in kept.items():
      values.extend(it[name] for it in items)
  latents.flush()
  for name, values in kept.items():
    arr = np.asarray(values)
    if name == 'label':
      arr = arr.astype(np.int32)
    np.save(os.path.join(out_dir, _field_file(name)), arr)
  with open(os.path.join(out_dir, 'meta.json'), 'w') as f:
    json.dump(dict(num_examples=n, latent_shape=list(latents.shape[1:]),
                   fields=sorted(kept), **(meta or {})), f)
  return n


class LatentSource:
  """Random-access reader of `encode_dataset` output.

  Items: 'latent' float32 (h, w, c), 'label' int32 and the other kept
  fields (e.g. 'caption') when stored. (Latent sources carry no 'image';
  decode with the autoencoder for previews.)
  """

  def __init__(self, path: str, split: str | None = None):
    # As the registered source 'latents' (config.data = dict(name='latents',
    # path=DIR)): DIR/<split> when it holds latents, else DIR itself.
    if split and os.path.exists(os.path.join(path, split, 'meta.json')):
      path = os.path.join(path, split)
    if not os.path.exists(os.path.join(path, 'meta.json')):
      raise FileNotFoundError(
          f'No pre-encoded latents in {path!r}: run encode_dataset (see the '
          'visgen.data.latents module docstring) first.')
    self.latents = np.load(os.path.join(path, 'latents.npy'), mmap_mode='r')
    with open(os.path.join(path, 'meta.json')) as f:
      names = json.load(f).get('fields', ['label'])
    self.fields = {}
    for name in names:
      file = os.path.join(path, _field_file(name))
      if os.path.exists(file):
        self.fields[name] = np.load(file)
    self.labels = self.fields.get('label')

  def __len__(self) -> int:
    return self.latents.shape[0]

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    out = dict(latent=np.asarray(self.latents[int(index)], np.float32))
    for name, values in self.fields.items():
      out[name] = values[int(index)]
    return out


class _Prefix:
  """The first n examples of a source."""

  def __init__(self, source, n: int):
    self.source, self.n = source, min(int(n), len(source))

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, index: int):
    return self.source[index]


def autoencoder_encoder(workdir: str, *, weights: str = 'ema',
                        sample: bool = False, seed: int = 0):
  """(jitted uint8 (B, H, W, C) -> latents, model config) of a trained
  autoencoder workdir, its weights loaded as a frozen component."""
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections as mlc  # pylint: disable=g-import-not-at-top

  from visgen import config_lib  # pylint: disable=g-import-not-at-top
  from visgen import frozen as frozen_lib  # pylint: disable=g-import-not-at-top
  from visgen import sharding  # pylint: disable=g-import-not-at-top
  from visgen.data import preprocess  # pylint: disable=g-import-not-at-top
  from visgen.models import autoencoder as ae_lib  # pylint: disable=g-import-not-at-top

  shard_cfg = mlc.ConfigDict(config_lib.mesh_and_sharding('dp'))
  mesh = sharding.make_mesh(shard_cfg.mesh)
  entry = dict(source=f'workdir:{workdir}', weights=weights)
  params, apply, _, _ = frozen_lib.load_component('autoencoder', entry, mesh,
                                                  shard_cfg)
  with open(os.path.join(workdir, 'config.json')) as f:
    model_cfg = json.load(f)['model']
  counter = [0]

  @jax.jit
  def encode(p, images, key):
    mean, logvar = apply(p, preprocess.to_float(images), method='encode')
    return ae_lib.sample_posterior(key, mean, logvar) if sample else mean

  def encode_fn(images):
    counter[0] += 1
    key = jax.random.fold_in(jax.random.key(seed), counter[0])
    return encode(params, images, key)

  return encode_fn, model_cfg


def encode_to_dir(workdir: str, *, out: str, dataset: str = 'shapes',
                  split: str = 'train', resolution: int | None = None,
                  num_examples: int | None = None, batch: int = 256,
                  weights: str = 'ema', sample: bool = False,
                  stats_examples: int = 1000,
                  fields: tuple[str, ...] = ('label',),
                  source_options: dict | None = None) -> tuple[int, dict]:
  """Encodes `dataset`/`split` (its first `num_examples`) with the trained
  autoencoder of `workdir` into `out`; (count, latent statistics).

  The statistics come from the workdir, or are computed on the first
  `stats_examples` examples and written there (latent_stats.json).
  `fields` are kept beside the latents (`encode_dataset`); `source_options`
  are further keyword arguments of the source (e.g. shapes' `heldout`).
  """
  from visgen import data  # pylint: disable=g-import-not-at-top
  from visgen.evaluators import datasets  # pylint: disable=g-import-not-at-top
  from visgen.tasks import autoencoder as ae_task  # pylint: disable=g-import-not-at-top

  encode_fn, model_cfg = autoencoder_encoder(workdir, weights=weights,
                                             sample=sample)
  size = resolution or int(model_cfg.get('input_size', 32))
  source = data.get_source(dataset, split=split,
                           **datasets._size_kwargs(dataset, size),  # pylint: disable=protected-access
                           **(source_options or {}))
  if num_examples:
    source = _Prefix(source, num_examples)
  try:
    stats = ae_task.read_latent_stats(workdir)
  except FileNotFoundError:
    n = min(stats_examples, len(source))
    z = np.concatenate([np.asarray(encode_fn(np.stack(
        [source[i]['image'] for i in range(s, min(n, s + batch))])))
                        for s in range(0, n, batch)])
    stats = ae_task.latent_stats(z)
    with open(os.path.join(workdir, ae_task.STATS_FILE), 'w') as f:
      json.dump(stats, f, indent=1)
    print(f'latent statistics of {n} examples -> '
          f'{os.path.join(workdir, ae_task.STATS_FILE)}')
  n = encode_dataset(source, encode_fn, out_dir=out, batch_size=batch,
                     fields=tuple(fields),
                     meta=dict(autoencoder=workdir, dataset=dataset,
                               split=split, sample=sample, **stats))
  return n, stats


def main(argv=None) -> int:
  import argparse  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(prog='python -m visgen.data.latents')
  parser.add_argument('--autoencoder', required=True,
                      help='workdir of a trained autoencoder_kl run')
  parser.add_argument('--dataset', default='shapes')
  parser.add_argument('--split', default='train')
  parser.add_argument('--resolution', type=int, default=None,
                      help="the images' side (default: the autoencoder's)")
  parser.add_argument('--num_examples', type=int, default=None)
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--weights', default='ema', help="'ema' or 'raw'")
  parser.add_argument('--sample', action='store_true',
                      help='posterior samples instead of means')
  parser.add_argument('--stats_examples', type=int, default=1000,
                      help='examples for latent statistics when the '
                      'workdir has none')
  parser.add_argument('--fields', default='label',
                      help='comma-separated per-example fields kept beside '
                      "the latents (e.g. 'label,caption')")
  parser.add_argument('--out', default=None)
  args = parser.parse_args(argv)
  workdir = os.path.expanduser(args.autoencoder)
  if not os.path.isfile(os.path.join(workdir, 'config.json')):
    parser.error(f'--autoencoder={args.autoencoder}: no config.json there; '
                 'pass the workdir of a trained autoencoder run.')
  if args.out is None:
    parser.error('--out=DIR is required.')
  n, stats = encode_to_dir(
      workdir, out=args.out, dataset=args.dataset, split=args.split,
      resolution=args.resolution, num_examples=args.num_examples,
      batch=args.batch, weights=args.weights, sample=args.sample,
      stats_examples=args.stats_examples,
      fields=tuple(f for f in args.fields.split(',') if f))
  print(f'{n} latents -> {args.out} (scale factor '
        f'{stats["latent_scale_factor"]:.5g})')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())


def origin(config) -> tuple[str | None, dict]:
  """(dataset name, its source options) a run's data comes from.

  For pre-encoded latents (`config.data.name == 'latents'`) that is the
  encoded dataset: the encoding stage's spec while `data.path` is still a
  'stage:<name>' source, else the latents' meta.json; for any other data
  source, its own name and config.
  """
  data = dict(config.get('data') or {})
  if data.get('name') != 'latents':
    return data.get('name'), data
  path = data.get('path')
  if isinstance(path, str) and path.startswith('stage:'):
    spec = dict((config.get('stages') or {}).get(path[len('stage:'):]) or {})
    return spec.get('dataset', 'shapes'), dict(
        spec.get('source_options') or {})
  for where in (os.path.join(str(path), 'train'), str(path)):
    try:
      with open(os.path.join(where, 'meta.json')) as f:
        meta = json.load(f)
    except OSError:
      continue
    return meta.get('dataset'), dict(meta.get('source_options') or {})
  return None, {}
