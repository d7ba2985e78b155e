"""Reading pretrained weights: visgen workdirs, .npz and .safetensors files.

A weight source is a string:

  'workdir:PATH'       the latest Orbax checkpoint of a visgen run in PATH
                       (`PATH/checkpoints/<step>/state`), EMA or raw params
  'npz:PATH'           a numpy .npz archive
  'safetensors:PATH'   a .safetensors file (read here with numpy only: the
                       format is an 8-byte header length, a JSON header of
                       {name: {dtype, shape, data_offsets}}, then raw bytes)

A bare PATH ending in .npz / .safetensors, or naming a directory, is
accepted too. Files are flat {key: array} tables; a converter
(`CONVERTERS` below) maps their keys to parameter paths
(`visgen.param_tree`). Every mismatch is reported with the file, the
parameter path and the expected and found shapes.
"""

import json
import os
import struct
from typing import Any

import jax
import ml_dtypes
import numpy as np

from visgen import param_tree
from visgen.registry import Registry

KINDS = ('workdir', 'npz', 'safetensors')
_SAFETENSORS_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16,
    'BF16': ml_dtypes.bfloat16, 'I64': np.int64, 'I32': np.int32,
    'I16': np.int16, 'I8': np.int8, 'U64': np.uint64, 'U32': np.uint32,
    'U16': np.uint16, 'U8': np.uint8, 'BOOL': np.bool_,
}
_MAX_LISTED = 8

# Converters: (arrays of a file, {path: expected ShapeDtypeStruct}) ->
# {parameter path: array}. Importers of other layouts register theirs.
CONVERTERS = Registry('weight converter')


@CONVERTERS.register('identity')
def identity(arrays: dict[str, np.ndarray], expected: dict[str, Any]
             ) -> dict[str, np.ndarray]:
  """Keys are already the '/'-joined parameter paths."""
  del expected
  return dict(arrays)


@CONVERTERS.register('hf_bert')
def hf_bert(arrays: dict[str, np.ndarray], expected: dict[str, Any]
            ) -> dict[str, np.ndarray]:
  """HF BertModel names (all-MiniLM-L6-v2) -> `text_encoders.BertText`."""
  from visgen.models import text_encoders  # pylint: disable=g-import-not-at-top
  return text_encoders.convert_hf_bert(arrays, expected)


@CONVERTERS.register('hf_clip_text')
def hf_clip_text(arrays: dict[str, np.ndarray], expected: dict[str, Any]
                 ) -> dict[str, np.ndarray]:
  """transformers CLIPTextModel names -> `text_encoders.CLIPText`."""
  from visgen.models import text_encoders  # pylint: disable=g-import-not-at-top
  return text_encoders.convert_hf_clip_text(arrays, expected)


def parse_source(source: str, *, what: str) -> tuple[str, str]:
  """(kind, expanded path) of a weight source string."""
  if not isinstance(source, str) or not source:
    raise ValueError(f'{what}: needs a weight source, got {source!r}. Use '
                     "'workdir:PATH', 'npz:PATH' or 'safetensors:PATH'.")
  kind, sep, path = source.partition(':')
  if not sep or kind not in KINDS:
    path = source
    if source.endswith('.npz'):
      kind = 'npz'
    elif source.endswith('.safetensors'):
      kind = 'safetensors'
    elif os.path.isdir(os.path.expanduser(source)):
      kind = 'workdir'
    else:
      raise ValueError(
          f'{what}: cannot tell the kind of weight source {source!r}. Use '
          "'workdir:PATH' (a visgen run), 'npz:PATH' or 'safetensors:PATH'.")
  return kind, os.path.expanduser(path)


# ----------------------------------------------------------------------------
# Files.
# ----------------------------------------------------------------------------


def _require_file(path: str, what: str):
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'{what}: weight file {path} not found. Create it (e.g. '
        'visgen.weights.save_npz(path, params) from a trained model, or a '
        'converter script), or point the source at an existing .npz / '
        ".safetensors file or a visgen workdir ('workdir:PATH').")


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """{name: array} of a .safetensors file (numpy only, no torch)."""
  with open(path, 'rb') as f:
    raw = f.read()
  if len(raw) < 8:
    raise ValueError(f'{path} is not a safetensors file (too short).')
  (n,) = struct.unpack('<Q', raw[:8])
  if 8 + n > len(raw):
    raise ValueError(f'{path} is not a safetensors file (header length {n} '
                     f'exceeds the file size {len(raw)}).')
  try:
    header = json.loads(raw[8:8 + n])
  except ValueError as e:
    raise ValueError(f'{path}: unreadable safetensors header: {e}') from e
  data = memoryview(raw)[8 + n:]
  out = {}
  for name, entry in header.items():
    if name == '__metadata__':
      continue
    if entry['dtype'] not in _SAFETENSORS_DTYPES:
      raise ValueError(f'{path}: tensor {name!r} has dtype {entry["dtype"]} '
                       'which visgen does not read. Supported: '
                       f'{", ".join(_SAFETENSORS_DTYPES)}.')
    dtype = np.dtype(_SAFETENSORS_DTYPES[entry['dtype']])
    begin, end = entry['data_offsets']
    shape = tuple(entry['shape'])
    if end - begin != int(np.prod(shape)) * dtype.itemsize:
      raise ValueError(f'{path}: tensor {name!r} of shape {shape} '
                       f'{entry["dtype"]} has {end - begin} bytes.')
    out[name] = np.frombuffer(data[begin:end], dtype=dtype).reshape(shape)
  return out


def write_safetensors(path: str, arrays: dict[str, Any]) -> None:
  """Writes {name: array} as .safetensors (what `read_safetensors` reads)."""
  names = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}
  header, blobs, offset = {}, [], 0
  for name, value in arrays.items():
    a = np.ascontiguousarray(np.asarray(value))
    if a.dtype not in names:
      raise ValueError(f'Cannot write {name!r}: dtype {a.dtype}.')
    blob = a.tobytes()
    header[name] = dict(dtype=names[a.dtype], shape=list(a.shape),
                        data_offsets=[offset, offset + len(blob)])
    blobs.append(blob)
    offset += len(blob)
  text = json.dumps(header, separators=(',', ':')).encode()
  text += b' ' * (-len(text) % 8)  # The format aligns the data to 8 bytes.
  with open(path, 'wb') as f:
    f.write(struct.pack('<Q', len(text)) + text + b''.join(blobs))


_TORCH_STORAGES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64,
    'HalfStorage': np.float16, 'BFloat16Storage': ml_dtypes.bfloat16,
    'LongStorage': np.int64, 'IntStorage': np.int32, 'ShortStorage': np.int16,
    'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
}


def read_torch_pt(path: str, *, what: str = 'checkpoint') -> Any:
  """The object of a PyTorch zip checkpoint (`torch.save`, torch >= 1.6),
  its tensors as numpy arrays, read without torch.

  Only plain containers (dict / OrderedDict / list / tuple), numbers,
  strings, tensors and argparse.Namespace (kept as a dict) are rebuilt: any
  other pickled class is refused (an UnpicklingError naming it), so a
  checkpoint cannot run code here, unlike torch.load(weights_only=False).
  """
  import collections  # pylint: disable=g-import-not-at-top
  import pickle  # pylint: disable=g-import-not-at-top
  import zipfile  # pylint: disable=g-import-not-at-top

  _require_file(path, what)
  try:
    archive = zipfile.ZipFile(path)
  except zipfile.BadZipFile as e:
    raise ValueError(
        f'{what} {path} is not a PyTorch zip checkpoint ({e}); re-save it '
        'with torch.save (torch >= 1.6) or convert it to .safetensors.'
        ) from e
  pkl = [n for n in archive.namelist() if n.endswith('data.pkl')]
  if len(pkl) != 1:
    raise ValueError(f'{what} {path}: expected one data.pkl in the archive, '
                     f'found {pkl or "none"}.')
  prefix = pkl[0][:-len('data.pkl')]
  storages: dict[str, np.ndarray] = {}

  def rebuild_tensor(storage, offset, size, stride, *unused):
    del unused
    if not size:
      return storage[offset].copy()
    item = storage.itemsize
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size),
        strides=tuple(st * item for st in stride)).copy()

  def rebuild_parameter(data, *unused):
    del unused
    return data

  class Namespace(dict):

    def __setstate__(self, state):
      self.update(state)

  allowed = {
      ('collections', 'OrderedDict'): collections.OrderedDict,
      ('torch._utils', '_rebuild_tensor_v2'): rebuild_tensor,
      ('torch._utils', '_rebuild_parameter'): rebuild_parameter,
      ('argparse', 'Namespace'): Namespace,
  }

  class Unpickler(pickle.Unpickler):

    def find_class(self, module, name):
      if module == 'torch' and name in _TORCH_STORAGES:
        return _TORCH_STORAGES[name]
      if (module, name) in allowed:
        return allowed[(module, name)]
      raise pickle.UnpicklingError(
          f'{what} {path} pickles {module}.{name}, which is not read here '
          '(only tensors and plain containers are); load it with torch and '
          'save its state dict with safetensors instead.')

    def persistent_load(self, pid):
      kind, dtype, key, _, numel = pid[:5]
      if kind != 'storage':
        raise pickle.UnpicklingError(f'{what} {path}: unknown persistent '
                                     f'id {kind!r}.')
      if key not in storages:
        raw = archive.read(f'{prefix}data/{key}')
        storages[key] = np.frombuffer(raw, dtype=dtype, count=int(numel))
      return storages[key]

  with archive.open(pkl[0]) as f:
    return Unpickler(f).load()


def read_file(kind: str, path: str, *, what: str) -> dict[str, np.ndarray]:
  """{key: array} of an .npz or .safetensors file."""
  _require_file(path, what)
  if kind == 'npz':
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  if kind == 'safetensors':
    return read_safetensors(path)
  raise ValueError(f'{what}: {kind!r} is not a file kind (npz, safetensors).')


def save_npz(path: str, params: Any) -> None:
  """Saves params as an .npz keyed by parameter path ('identity' layout)."""
  flat = {k: np.asarray(v) for k, v in param_tree.flatten(params).items()}
  np.savez(path, **flat)


# ----------------------------------------------------------------------------
# visgen workdirs (Orbax checkpoints of the train state).
# ----------------------------------------------------------------------------


def _checkpoint_step(workdir: str, step: int | None, what: str) -> int:
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  steps = sorted(int(d) for d in (os.listdir(ckpt_dir) if os.path.isdir(
      ckpt_dir) else ()) if d.isdigit() and os.path.isdir(
          os.path.join(ckpt_dir, d, 'state')))
  if not steps:
    raise FileNotFoundError(
        f'{what}: no checkpoint in {ckpt_dir}. Train that run first '
        f'(python -m visgen.main --config=... --workdir={workdir}) or point '
        'the source at another workdir or weight file.')
  if step is None:
    return steps[-1]
  if step not in steps:
    raise FileNotFoundError(f'{what}: no checkpoint of step {step} in '
                            f'{ckpt_dir}; available steps: {steps}.')
  return step


def _ema_choice(workdir: str, keys: list[str], weights: str,
                what: str) -> str:
  """The EMA entry of the checkpoint that `weights` names."""
  if not keys:
    raise ValueError(f'{what}: the checkpoint in {workdir} has no EMA '
                     "params (ema_decays=()); use weights='raw'.")
  if weights.startswith('ema:'):
    try:
      key = f'{float(weights[4:]):g}'.replace('.', 'p')
    except ValueError as e:
      raise ValueError(f"{what}: weights={weights!r}; write 'ema:<decay>' "
                       "with a number, e.g. 'ema:0.9999'.") from e
    if key not in keys:
      raise ValueError(f'{what}: no EMA {weights[4:]} in {workdir}; it '
                       f'has {", ".join(k.replace("p", ".") for k in keys)}.')
    return key
  if len(keys) == 1:
    return keys[0]
  try:  # Several EMAs: the run's first decay, as its own evaluations use.
    with open(os.path.join(workdir, 'config.json')) as f:
      first = json.load(f)['ema_decays'][0]
    key = f'{float(first):g}'.replace('.', 'p')
    if key in keys:
      return key
  except (OSError, ValueError, KeyError, IndexError):
    pass
  raise ValueError(f'{what}: {workdir} holds several EMAs '
                   f'({", ".join(keys)}); choose one with '
                   "weights='ema:<decay>'.")


def checkpoint_tree(workdir: str, *, weights: str = 'ema',
                    step: int | None = None, what: str = 'weights'
                    ) -> tuple[str, tuple[str, ...], Any]:
  """(item dir, keys of the chosen params, their saved metadata subtree).

  `weights`: 'ema' (the run's first EMA), 'ema:<decay>' or 'raw'.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  if not os.path.isdir(workdir):
    raise FileNotFoundError(
        f'{what}: workdir {workdir} not found. Train a run there first '
        f'(python -m visgen.main --config=... --workdir={workdir}) or fix '
        'the path.')
  step = _checkpoint_step(workdir, step, what)
  item = os.path.join(workdir, 'checkpoints', str(step), 'state')
  tree = ocp.PyTreeCheckpointer().metadata(item).item_metadata.tree
  if weights == 'raw':
    keys = ('params',)
  elif weights == 'ema' or weights.startswith('ema:'):
    keys = ('ema', _ema_choice(workdir, sorted(tree.get('ema') or {}),
                               weights, what))
  else:
    raise ValueError(f"{what}: weights={weights!r}; valid: 'ema', "
                     "'ema:<decay>', 'raw'.")
  sub = tree
  for k in keys:
    sub = sub[k]
  return item, keys, sub


def _restore(item: str, keys: tuple[str, ...], target: Any, args: Any):
  """Restores only `target` (a subtree at `keys`) of a saved train state."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  for k in reversed(keys):
    target, args = {k: target}, {k: args}
  out = ocp.PyTreeCheckpointer().restore(item, args=ocp.args.PyTreeRestore(
      item=target, restore_args=args, partial_restore=True))
  for k in keys:
    out = out[k]
  return out


def read_checkpoint(workdir: str, *, weights: str = 'ema',
                    step: int | None = None, what: str = 'weights'
                    ) -> dict[str, np.ndarray]:
  """{path: host numpy array} of a workdir's EMA or raw params."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  item, keys, sub = checkpoint_tree(workdir, weights=weights, step=step,
                                    what=what)
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype),
                        sub)
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                      target)
  return param_tree.flatten(_restore(item, keys, target, args))


def restore_sharded(workdir: str, abstract: Any, *, weights: str = 'ema',
                    step: int | None = None, what: str = 'weights') -> Any:
  """A workdir's params restored directly into `abstract`'s shardings.

  `abstract` is a params pytree of jax.ShapeDtypeStruct with shardings;
  shapes are checked first (errors name the parameter path and shapes);
  values are cast to `abstract`'s dtypes.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  item, keys, sub = checkpoint_tree(workdir, weights=weights, step=step,
                                    what=what)
  expected = param_tree.flatten(abstract)
  check_shapes({p: tuple(m.shape) for p, m in param_tree.flatten(
      sub).items()}, expected, origin=f'checkpoint {item} ({"/".join(keys)})',
               what=what)
  # The saved structure, with the model's dtypes and shardings as leaves.
  target = param_tree.map_with_path(lambda p, _: expected[p], sub)
  args = ocp.checkpoint_utils.construct_restore_args(target)
  out = _restore(item, keys, target, args)
  return param_tree.rebuild(abstract, param_tree.flatten(out))


# ----------------------------------------------------------------------------
# Checks.
# ----------------------------------------------------------------------------


def check_shapes(found: dict[str, tuple[int, ...]], expected: dict[str, Any],
                 *, origin: str, what: str, allow_extra: bool = False
                 ) -> None:
  """Raises ValueError listing every missing, extra or misshapen path."""
  problems = []
  for path, want in expected.items():
    if path not in found:
      problems.append(f'parameter {path!r} (expected shape '
                      f'{tuple(want.shape)}) is missing')
    elif tuple(found[path]) != tuple(want.shape):
      problems.append(f'parameter {path!r}: expected shape '
                      f'{tuple(want.shape)}, found {tuple(found[path])}')
  if not allow_extra:
    problems += [f'entry {p!r} (shape {tuple(s)}) matches no parameter'
                 for p, s in found.items() if p not in expected]
  if problems:
    more = len(problems) - _MAX_LISTED
    raise ValueError(
        f'{what}: {origin} does not match the model ({len(problems)} '
        'problems):\n  ' + '\n  '.join(problems[:_MAX_LISTED])
        + (f'\n  ... and {more} more' if more > 0 else '')
        + '\nCheck the model config (same architecture and sizes as the '
        'weights) and the converter.')
