"""grain pipelines: shuffle, repeat, flip, batch, per-host sharding, resume.

A source is any random-access object (`len` + `__getitem__` returning a dict
of numpy arrays, 'image' uint8 HWC). `make_iterator` builds a
`grain.MapDataset` pipeline over it and returns a `grain.DatasetIterator`
whose position is saved with `get_state` / `set_state`, or inside an Orbax
`CheckpointManager` composite with `checkpoint_args`:

  it = make_iterator(source, batch_size=64, seed=0)
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=checkpoint_args(it)))
  mngr.restore(step, args=ocp.args.Composite(
      state=..., data=checkpoint_args(it, restore=True)))  # `it` moves.

Conditioning of any kind travels in the same dicts: numeric entries (token
ids, control maps, source images, masks, actions, frame stacks) are batched
along a new leading axis and, with `make_global_array`, sharded over the
mesh's batch axes exactly like images; strings (captions, instructions) stay
on the host as numpy str arrays. Per-example host-side hooks (`transforms`,
e.g. the tokenizer of `config.data.tokenizer`, `visgen.data.tokenize`) run
before batching. A task declares the entries it reads as a batch spec
({key: (shape, dtype)}, see `check_batch`); a missing or misshapen entry
fails with a message naming the key and the expected and found shapes.

Global order: the source is shuffled once per epoch (grain reseeds the
shuffle each epoch), then flips are drawn per element of the global stream.
Global batch k holds stream elements [k * B, (k + 1) * B); process p of P
gets the contiguous slice [k * B + p * B / P, k * B + (p + 1) * B / P), so
the P processes together see exactly the single-process global batch, and
`make_global_array` reassembles it as one `jax.Array`.
"""

from typing import Any
from typing import Callable
from typing import Mapping
from typing import Sequence

import grain
import numpy as np

# Entries of `config.data` that configure the pipeline, not the source.
PIPELINE_KEYS = ('batch_size', 'flip', 'num_threads', 'tokenizer')


def _is_spatial(key: str) -> bool:
  """Per-pixel keys ((..., H, W, C) arrays) that a flip must move together."""
  return ('image' in key or 'mask' in key or 'edges' in key
          or key == 'video')


def _flip(example: dict[str, Any], rng: np.random.Generator):
  """Random horizontal flip of all per-pixel arrays of an example."""
  if rng.random() >= 0.5:
    return example
  return {
      k: np.ascontiguousarray(v[..., ::-1, :]) if _is_spatial(k) else v
      for k, v in example.items()
  }


def make_iterator(
    source,
    *,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    repeat: bool = True,
    drop_remainder: bool = True,
    flip: bool = False,
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int = 0,
    transforms: Sequence[Callable[[dict], dict]] = (),
) -> grain.DatasetIterator:
  """Returns a deterministic, checkpointable iterator of host-local batches.

  Args:
    source: random-access source (len + getitem -> dict of numpy arrays).
    batch_size: GLOBAL batch size; each process yields
      `batch_size // process_count` rows, its own disjoint slice.
    seed: seeds the shuffle and the flips; same seed, same stream.
    shuffle: shuffle the source each epoch (a different order per epoch).
    repeat: repeat forever (batches then run across epoch boundaries).
    drop_remainder: drop a final partial batch (only matters without repeat;
      required for multi-process runs without repeat, so that every process
      yields the same number of batches).
    flip: random horizontal flips of every per-pixel array (images, videos,
      masks, edges) together. Keypoints, positions, captions and
      instructions are NOT flipped: do not flip scene data whose left/right
      ground truth is used.
    process_index: this process (default `jax.process_index()`).
    process_count: number of processes (default `jax.process_count()`).
    num_threads: grain read threads (0: read in the calling thread).
    transforms: deterministic per-example maps applied after the flip and
      before batching (host-side hooks such as tokenisation).

  Returns:
    A `grain.DatasetIterator` of dicts of numpy arrays (uint8 images).
  """
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top

    if process_index is None:
      process_index = jax.process_index()
    if process_count is None:
      process_count = jax.process_count()
  if batch_size % process_count:
    raise ValueError(
        f'batch_size={batch_size} is not divisible by process_count='
        f'{process_count}; use a multiple of the number of processes.'
    )
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} not in [0, '
                     f'{process_count}).')
  if process_count > 1 and not repeat and not drop_remainder:
    raise ValueError(
        'Multi-process iteration without repeat needs drop_remainder=True '
        'so that all processes yield the same number of batches.'
    )
  local = batch_size // process_count
  ds = grain.MapDataset.source(source)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  if repeat:
    ds = ds.repeat(None)
  if flip:
    # A seed distinct from the shuffle's: flips must not correlate with order.
    ds = ds.random_map(_flip, seed=seed + 1_000_003)
  for fn in transforms:
    ds = ds.map(fn)
  ds = ds.batch(local, drop_remainder=drop_remainder)
  if process_count > 1:
    if not repeat:
      # Keep whole global batches only, so every host gets the same count.
      ds = ds[: (len(ds) // process_count) * process_count]
    ds = ds[process_index::process_count]
  read_options = grain.ReadOptions(
      num_threads=num_threads, prefetch_buffer_size=2 * num_threads
  )
  return iter(ds.to_iter_dataset(read_options))


def example_transforms(data_cfg: Mapping[str, Any]
                       ) -> list[Callable[[dict], dict]]:
  """The per-example host hooks `config.data` asks for (the tokenizer);
  training batches and held-out evaluation batches both apply them."""
  tokenizer = data_cfg.get('tokenizer')
  if not tokenizer:
    return []
  from visgen.data import tokenize  # pylint: disable=g-import-not-at-top

  return [tokenize.make_hook(tokenizer)]


def make_iterator_from_config(source, data_cfg: Mapping[str, Any], *,
                              seed: int, **kwargs) -> grain.DatasetIterator:
  """`make_iterator` with `config.data`'s pipeline entries (PIPELINE_KEYS):
  batch_size, flip, num_threads and the tokenizer hook."""
  transforms = list(kwargs.pop('transforms', ())) + example_transforms(
      data_cfg)
  return make_iterator(
      source, batch_size=data_cfg['batch_size'], seed=seed,
      flip=data_cfg.get('flip', False),
      num_threads=data_cfg.get('num_threads', 0), transforms=transforms,
      **kwargs)


def source_kwargs(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
  """`config.data` without its name and pipeline entries: the source's
  keyword arguments."""
  return {k: v for k, v in dict(data_cfg).items()
          if k != 'name' and k not in PIPELINE_KEYS}


def _is_string(x) -> bool:
  return np.asarray(x).dtype.kind in 'USO'


def _fmt(shape, dtype) -> str:
  dims = ', '.join('*' if d is None else str(d) for d in shape)
  dims += ',' if len(shape) == 1 else ''
  name = 'str' if dtype in (str, 'str') else str(np.dtype(dtype))
  return f'({dims}) {name}'


def _spec_entry(key: str, value) -> tuple[tuple, Any]:
  """(shape, dtype) of a spec value: a (shape, dtype) pair or anything with
  .shape and .dtype (jax.ShapeDtypeStruct, arrays)."""
  if hasattr(value, 'shape') and hasattr(value, 'dtype'):
    return tuple(value.shape), value.dtype
  try:
    shape, dtype = value
    return tuple(shape), dtype
  except (TypeError, ValueError) as e:
    raise TypeError(f'Batch spec entry {key!r} must be (shape, dtype) or '
                    f'have .shape and .dtype, got {value!r}.') from e


def _dtype_ok(found: np.dtype, want) -> bool:
  if want in (str, 'str'):
    return found.kind in 'USO'
  return found == np.dtype(want)


def check_batch(batch: Mapping[str, Any], spec: Mapping[str, Any], *,
                what: str = 'Batch') -> None:
  """Raises ValueError unless every spec entry is in `batch` as specified.

  Args:
    batch: dict of (host-local or global) arrays.
    spec: key -> (shape, dtype) or jax.ShapeDtypeStruct, shapes including
      the leading batch axis; None in a shape matches any size; dtype str
      (or 'str') matches any string array.
    what: how the batch is named in messages.
  """
  problems = []
  for key, value in spec.items():
    shape, dtype = _spec_entry(key, value)
    if key not in batch:
      problems.append(f'no entry {key!r} (expected {_fmt(shape, dtype)})')
      continue
    x = batch[key]
    found_shape = tuple(np.shape(x))
    found_dtype = np.dtype(x.dtype) if hasattr(x, 'dtype') else (
        np.asarray(x).dtype)
    shape_ok = len(found_shape) == len(shape) and all(
        w is None or w == f for w, f in zip(shape, found_shape))
    if not shape_ok or not _dtype_ok(found_dtype, dtype):
      problems.append(f'entry {key!r}: expected {_fmt(shape, dtype)}, found '
                      f'{_fmt(found_shape, found_dtype)}')
  if problems:
    raise ValueError(
        f'{what} does not match what the task reads:\n  '
        + '\n  '.join(problems)
        + f'\nThe batch has: {", ".join(sorted(batch))}. Check config.data '
        '(dataset, resolution, tokenizer) against the task config.')


def device_entries(batch: Mapping[str, Any],
                   keys: Sequence[str] | None = None) -> dict[str, Any]:
  """The entries that go to the devices: `keys` (default: every numeric
  entry). Strings stay on the host; asking for one is an error that says to
  tokenise it."""
  if keys is None:
    return {k: v for k, v in batch.items() if not _is_string(v)}
  out = {}
  for k in keys:
    if k not in batch:
      raise KeyError(f'The batch has no entry {k!r}; it has '
                     f'{", ".join(sorted(batch))}.')
    if _is_string(batch[k]):
      raise ValueError(
          f'Batch entry {k!r} holds strings (dtype {np.asarray(batch[k]).dtype}'
          '), which stay on the host. Tokenise it (config.data.tokenizer = '
          f"dict(name=..., keys=({k!r},))) and read '{k}_tokens' and "
          f"'{k}_mask'.")
    out[k] = batch[k]
  return out


def checkpoint_args(iterator: grain.DatasetIterator, *, restore: bool = False):
  """The Orbax `CheckpointArgs` that save/restore `iterator`'s position.

  Use as the 'data' item of an `ocp.args.Composite` in a `CheckpointManager`.
  Restoring moves `iterator` itself (it must come from the same
  `make_iterator` call, i.e. same source, batch size, seed and sharding).
  Each process writes its own `process_<i>-of-<n>.json` file.
  """
  # grain.checkpoint defines these args only when Orbax imports; it does here.
  if restore:
    return grain.checkpoint.CheckpointRestore(iterator)
  return grain.checkpoint.CheckpointSave(iterator)


def make_global_array(batch, mesh, *, batch_axes=('data',)):
  """Turns a host-local batch (a pytree of numpy arrays) into global arrays.

  Each leaf's leading axis is sharded over the mesh axes `batch_axes` with
  `jax.make_array_from_process_local_data`; the global leading dimension is
  the local one times the number of processes. Non-numeric leaves (captions,
  instructions) are not device data and are returned unchanged.

  Args:
    batch: dict (or pytree) of host-local numpy arrays.
    mesh: a `jax.sharding.Mesh`.
    batch_axes: mesh axis name(s) the batch dimension is split over, e.g.
      ('data',) or ('data', 'fsdp').

  Returns:
    The same pytree with numeric leaves replaced by global `jax.Array`s.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec  # pylint: disable=g-import-not-at-top

  axes = tuple(batch_axes)
  spec = PartitionSpec(axes if len(axes) > 1 else (axes[0] if axes else None))
  sharding = NamedSharding(mesh, spec)

  def to_global(x):
    x = np.asarray(x)
    if x.dtype.kind not in 'biuf':  # Strings stay on the host.
      return x
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(to_global, batch)
