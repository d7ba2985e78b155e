"""Config helpers: `:arg` parsing (big_vision style) and shared fragments.

Configs are `ml_collections.ConfigDict`s returned by `get_config(arg)` in
`configs/*.py`. The string after `:` in `--config=configs/X.py:arg` is parsed
by `parse_arg`:

  --config=configs/dit_imagenet.py:runlocal,variant=S/2
  --config=configs/dit_imagenet.py:variant=B/2   # a value
  --config=configs/dit_imagenet.py:runlocal      # a bool needs no value
  --config=configs/dit_imagenet.py:B/2           # first key, passed unnamed

Fragments (`optim`, `ema`, `mesh_dp`, ...) are plain functions composed by the
configs, never deep inheritance chains.
"""

import os
from typing import Any

import ml_collections as mlc

# Messages about what a config variant substituted (`:runlocal` swapping in
# mock data), logged by the entry point once logging is up; config files run
# while the flags are parsed, before that.
_NOTES: list[str] = []


def note(message: str) -> None:
  """Records a message for the entry point to log (see `pop_notes`)."""
  _NOTES.append(message)


def pop_notes() -> list[str]:
  """The recorded messages, oldest first; clears them."""
  out = list(_NOTES)
  _NOTES.clear()
  return out


def visgen_cache(*parts: str) -> str:
  """A path under visgen's cache folder: $VISGEN_CACHE, else ~/.cache/visgen
  (the folder the evaluators' weights also use)."""
  root = os.environ.get('VISGEN_CACHE') or os.path.join('~', '.cache',
                                                        'visgen')
  return os.path.join(root, *parts)


def tfds_data(name: str, *, batch_size: int, flip: bool) -> dict:
  """A TFDS-backed data entry. `data_dir` ('' = $TFDS_DATA_DIR, else
  ~/tensorflow_datasets) is declared so `--config.data.data_dir=DIR` works."""
  return dict(name=name, batch_size=batch_size, flip=flip, data_dir='')


def runlocal_data(c: mlc.ConfigDict, *, replaces: str,
                  **extra: Any) -> None:
  """runlocal's mock data: 64 procedural 8x8 RGB 'shapes' scenes (4
  classes, no download) in place of `replaces`; the run's log says so."""
  c.data = dict(name='shapes', resolution=8, num_examples=64, batch_size=8,
                **extra)
  note(f'runlocal: training on 64 procedural 8x8 RGB "shapes" scenes (4 '
       f'classes) in place of {replaces!r}, which is not used.')


def _convert(default: Any, value: str, key: str) -> Any:
  """Converts the string `value` to the type of `default`."""
  if isinstance(default, bool):
    lowered = value.lower()
    if lowered in ('', 'true', '1', 'yes'):
      return True
    if lowered in ('false', '0', 'no'):
      return False
    raise ValueError(f'Config arg {key}={value!r} is not a bool; use '
                     f'{key}=true or {key}=false.')
  try:
    if isinstance(default, int):
      return int(value)
    if isinstance(default, float):
      return float(value)
  except ValueError as e:
    raise ValueError(f'Config arg {key}={value!r} is not '
                     f'of type {type(default).__name__}.') from e
  return value


def named(entry) -> tuple[str, dict]:
  """Splits a config entry {'name': ..., **kwargs} (or a bare name string)
  into (name, kwargs) for a registry's `build`."""
  if isinstance(entry, str):
    return entry, {}
  kw = dict(entry)
  if 'name' not in kw:
    raise ValueError(f'Config entry {kw} needs a "name" field.')
  return kw.pop('name'), kw


def parse_arg(arg: str | None, **spec: Any) -> mlc.ConfigDict:
  """Parses 'a=1,b=x,flag' into a ConfigDict, typed by the defaults in spec.

  Args:
    arg: the string after ':' in the --config flag (may be None or empty).
    **spec: every accepted key with its default value; the value's type is
      the type the string is converted to (bool, int, float or str).

  Returns:
    A ConfigDict holding all keys of `spec`, overridden by `arg`.

  Raises:
    ValueError: an unknown key (listing the valid ones) or a bad value.
  """
  out = mlc.ConfigDict(dict(spec))
  if not arg:
    return out
  items = arg.split(',')
  # big_vision: a lone unnamed value sets the first spec entry.
  if len(items) == 1 and '=' not in items[0] and spec:
    first = next(iter(spec))
    if items[0] not in spec:
      out[first] = _convert(spec[first], items[0], first)
      return out
  for item in items:
    key, _, value = item.partition('=')
    key = key.strip()
    if key not in spec:
      raise ValueError(f'Unknown config arg {key!r} in {arg!r}. Valid args: '
                       f'{", ".join(spec)}.')
    if '=' not in item and not isinstance(spec[key], bool):
      raise ValueError(f'Config arg {key!r} needs a value ({key}=...).')
    out[key] = _convert(spec[key], value.strip(), key)
  return out


def _unset(field_type: type) -> mlc.FieldReference:
  """A None placeholder that `--config.a.b=v` can still set: config_flags
  refuses to override a plain None (its type is unknown). Stored as null,
  so runs saved before the field existed still resume."""
  return mlc.FieldReference(None, field_type=field_type)


def optim(*, lr: float, warmup_steps: int = 0, schedule: str = 'constant',
          weight_decay: float = 0.0, b1: float = 0.9, b2: float = 0.999,
          grad_clip: float = 1.0, accum_steps: int = 1) -> dict:
  """AdamW fragment; see `visgen.optim.make_optimizer` for the fields.

  `trainable` / `freeze`: tuples of regexes over whole '/'-joined parameter
  paths (None: train everything), e.g. `--config.optim.freeze=blocks/.*`
  or `--config.optim.trainable="('control/.*', 'zero_.*')"`.
  """
  return dict(name='adamw', lr=lr, warmup_steps=warmup_steps,
              schedule=schedule, weight_decay=weight_decay, b1=b1, b2=b2,
              eps=1e-8, grad_clip=grad_clip, accum_steps=accum_steps,
              end_lr_factor=0.0, trainable=_unset(tuple),
              freeze=_unset(tuple))


def init_from() -> dict:
  """`config.init_from` placeholder: no warm start until `source` is set.

  Fields as `visgen.warm_start`: source ('workdir:DIR', 'npz:FILE',
  'safetensors:FILE'), weights ('ema', 'ema:<decay>', 'raw'), step (None:
  the latest checkpoint), converter (`visgen.weights.CONVERTERS`), mapping
  ((regex, replacement) pairs; None: every parameter from the same path).
  Only a fresh run is warm-started, so it is a resumable key
  (`visgen.checkpoint.RESUMABLE_KEYS`).
  """
  return dict(source='', weights='ema', step=_unset(int),
              converter='identity', mapping=_unset(tuple))


# Logical-axis -> mesh-axis rules shared by every config. Data parallel,
# FSDP and hybrid differ only in the mesh sizes: with fsdp=1 the parameter
# rules shard over an axis of size 1, i.e. replicate.
SHARDING_RULES = (
    ('batch', ('data', 'fsdp')),
    ('embed', 'fsdp'),
    ('conv_out', 'fsdp'),
    ('mlp', None),
    ('heads', None),
    ('qkv', None),
)


def mesh_and_sharding(kind: str = 'dp') -> dict:
  """Mesh fragment: 'dp' (data parallel), 'fsdp' or 'hybrid' (2-way data)."""
  meshes = {
      'dp': [('data', -1), ('fsdp', 1)],
      'fsdp': [('data', 1), ('fsdp', -1)],
      'hybrid': [('data', 2), ('fsdp', -1)],
  }
  if kind not in meshes:
    raise ValueError(f'Unknown mesh kind {kind!r}. Valid choices: '
                     f'{", ".join(meshes)}.')
  return dict(mesh=meshes[kind], rules=[list(r) for r in SHARDING_RULES],
              fsdp_fallback_axis='fsdp', min_size_to_shard_mb=4.0)


def base_config(**overrides: Any) -> mlc.ConfigDict:
  """Fields every experiment has; configs fill in the rest.

  `overrides` replace defaults of those fields, e.g.
  base_config(total_steps=2000, ckpt_every=1000, ema_decays=(0.999,)); a
  name that is not a field raises (a typo must not add a dead key).
  """
  c = mlc.ConfigDict()
  c.seed = 0
  c.total_steps = 1000
  c.log_every = 50
  c.ckpt_every = 500
  c.keep_last = 2          # Latest checkpoints kept...
  c.keep_every = 0         # ...plus every K-th step forever (0: none).
  c.sample_every = 0       # PNG sample grids (0: only at the end).
  c.eval_every = 0         # In-loop evaluators (0: only at the end).
  c.num_grid_samples = 100  # PNG grid of EMA samples (0: none).
  c.num_samples = 50_000    # --mode=sample: images in the ADM .npz.
  c.sample_batch = 250
  c.ema_decays = (0.9999,)
  c.ema_warmup = False     # Debiased EMA: decay min(d, (1+n)/(10+n)).
  c.sharding = mesh_and_sharding('dp')
  c.frozen = mlc.ConfigDict()
  c.init_from = init_from()
  # Prerequisite runs trained first into WORKDIR/stages/<name>, named by
  # 'stage:<name>' weight sources (visgen.stages).
  c.stages = mlc.ConfigDict()
  unknown = sorted(set(overrides) - set(c.keys()))
  if unknown:
    raise ValueError(f'base_config() has no fields {unknown}; its fields: '
                     f'{", ".join(sorted(c.keys()))}.')
  c.update(overrides)
  return c


def cifar10(c: mlc.ConfigDict, *, runlocal: bool, batch_size: int = 128,
            num_classes: int = 0, flip: bool = True) -> mlc.ConfigDict:
  """CIFAR-10 32x32x3 through TFDS; runlocal swaps in tiny mock data.

  The full run needs CIFAR-10 prepared for TFDS (the data source's error
  says how). `runlocal` uses the procedural 'shapes' scenes at 8x8 RGB
  (4 classes), which need no download, with a 4-step run.
  """
  c.data = tfds_data('cifar10', batch_size=batch_size, flip=flip)
  c.task = dict(name='generation', num_classes=num_classes,
                label_dropout=0.1 if num_classes else 0.0,
                x_shape=(32, 32, 3))
  c.eval = dict(features=dict(feature_net='inception',
                              reference='cifar10:train',
                              num_samples=50_000, batch=500))
  if runlocal:
    runlocal_data(c, replaces='cifar10', flip=flip)
    c.task.x_shape = (8, 8, 3)
    c.task.num_classes = min(num_classes, 4)
    runlocal_common(c)
  return c


def runlocal_common(c: mlc.ConfigDict) -> None:
  """Seconds-long run settings shared by every config's runlocal variant."""
  c.total_steps = 2
  c.log_every = 1
  c.ckpt_every = 2
  c.num_grid_samples = 8 if not c.task.get('num_classes') else (
      2 * c.task.num_classes)
  c.sampler.steps = 2
  c.eval = {}


def tiny_unet(c: mlc.ConfigDict) -> None:
  """Shrinks a U-Net config to a test-sized one (runlocal)."""
  # One level and one attention block: U-Net compiles dominate CI time.
  c.model.update(model_channels=8, channel_mult=(1,), num_res_blocks=1,
                 attention_resolutions=(8,), num_heads=1, dropout=0.0,
                 input_size=c.task.x_shape[0],
                 num_classes=c.task.get('num_classes', 0))


def noisy_classifier(arg, *, data: dict, num_classes: int, x_shape: tuple,
                     num_grid_samples: int,
                     flatten: bool | None = None) -> mlc.ConfigDict:
  """ADM's noise-aware classifier recipe (task and model 'noisy_classifier').

  `arg` carries runlocal, clean, arch ('mlp' | 'conv'), width, depth, steps.
  The path must be the one of the generator it guides (rectified flow here,
  as the quickstart); the MLP reads flattened pixels (`flatten` defaults to
  arch == 'mlp'; the conv net reads either).
  """
  c = base_config(seed=0, total_steps=arg.steps, log_every=250,
                  ckpt_every=1000, ema_decays=(0.999,), ema_warmup=True)
  c.data = data
  c.task = dict(name='noisy_classifier', num_classes=num_classes,
                flatten=arg.arch == 'mlp' if flatten is None else flatten,
                x_shape=x_shape, clean=arg.clean)
  c.model = dict(name='noisy_classifier', num_classes=num_classes,
                 x_shape=x_shape, arch=arg.arch, dtype='float32')
  if arg.arch == 'conv':
    c.model.widths = (8, 16) if arg.runlocal else (32, 64)
  else:
    c.model.width = 32 if arg.runlocal else arg.width
    c.model.depth = 1 if arg.runlocal else arg.depth
  c.path = dict(name='linear')
  c.time_dist = dict(name='uniform')
  c.optim = optim(lr=1e-3, warmup_steps=100, schedule='cosine',
                  weight_decay=1e-4, grad_clip=1.0)
  # The sample grid: classifier guidance on an N(0, I) data model (see the
  # task); the loop's one guidance value is here the classifier scale.
  c.sampler = dict(name='euler', steps=16, cfg_scale=4.0)
  c.num_grid_samples = num_grid_samples
  c.eval = {}
  if arg.runlocal:
    c.total_steps = 4
    c.log_every = 1
    c.ckpt_every = 2
  return c


def scene_latents(c: mlc.ConfigDict, *, ae: str = '', ae_steps: int = 1600,
                  ae_batch: int = 16, z: int = 4, f: int = 4,
                  cache: int = 50000,
                  batch: int, runlocal: bool = False, res: int = 32,
                  fields: tuple[str, ...] = ('label',)) -> None:
  """Latent diffusion on `shapes` scenes (configs/shapes.py's recipe).

  Without `ae` the scene autoencoder (configs/autoencoder_shapes.py, f=4)
  (downsampling `f`: 32x32 -> (32/f)^2 x z latents) is trained first as
  the stage WORKDIR/stages/autoencoder; with
  `ae=WORKDIR` that trained autoencoder is used. With `cache` > 0 the first
  `cache` train scenes are pre-encoded once (an encoding stage keeping
  `fields` beside the latents) and c.data reads them (c.data's tokenizer,
  if any, is kept); with cache=0 every batch is encoded on the fly. Sets
  c.stages, c.frozen.autoencoder, c.data, c.task.x_shape / latent /
  data_key; the latents are normalised per channel (EDM2) and samples
  decoded to res x res scenes.
  """
  if ae:
    source = 'workdir:' + ae
  else:
    c.stages = dict(c.get('stages') or {}, autoencoder=dict(
        config='configs/autoencoder_shapes.py:' + (
            'runlocal' if runlocal else
            f'steps={ae_steps},batch={ae_batch},z={z}' +
            ('' if f == 4 else f',f={f}'))))
    source = 'stage:autoencoder'
  c.frozen = dict(c.get('frozen') or {}, autoencoder=dict(source=source))
  side = 8 if runlocal else res
  keep = {k: c.data[k] for k in ('tokenizer',) if k in c.data}
  if cache:
    c.stages = dict(c.get('stages') or {})
    c.stages['latents'] = dict(encode=source, dataset='shapes',
                               split='train',
                               num_examples=min(cache, 64) if runlocal
                               else cache, fields=tuple(fields))
    c.data = dict(name='latents', path='stage:latents',
                  batch_size=8 if runlocal else batch,
                  num_threads=1 if runlocal else 2, **keep)
    c.task.data_key = 'latent'
  elif runlocal:
    c.data = dict(name='shapes', resolution=8, num_examples=64, batch_size=8,
                  **keep)
  # The runlocal autoencoder is f=2 (8x8 -> 4x4).
  lat = 4 if runlocal else res // f
  c.task.x_shape = (lat, lat, z)
  c.task.latent = dict(frozen='autoencoder', image_shape=(side, side, 3),
                       normalize='channel')
