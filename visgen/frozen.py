"""Frozen components: pretrained networks the train step reads, never trains.

An autoencoder, a text encoder, the base model under a ControlNet, a
distillation teacher: each is an entry of `config.frozen`,

  config.frozen.teacher = dict(
      model=dict(name='mlp', dim=64, width=384, depth=4, num_classes=10),
      source='workdir:/tmp/qs',  # or 'npz:PATH' / 'safetensors:PATH'
      weights='ema',             # workdir: 'ema', 'ema:<decay>' or 'raw'
      step=None,                 # workdir: None = latest checkpoint
      converter='identity')      # files: file keys -> parameter paths

`model` has the form of `config.model` (a `visgen.models` name plus its
kwargs); with a workdir source it may be omitted, and the run's own
`config.json` model is used. `build_frozen(config, mesh)` loads every entry
sharded by the same logical rules as the trainable parameters
(`config.sharding`) and returns `.params` (name -> params pytree), passed to
the train step as its separate, non-donated `frozen` argument (so frozen
parameters are never in the optimizer nor in the saved train state), and
`.apply` (name -> apply(params, *args, method=None, **kw)).

Converters map a flat weight file to parameter paths ('/'-joined, see
`visgen.param_tree`). 'identity' reads files whose keys already are the
paths (what `visgen.weights.save_npz` writes); importers of other layouts
(diffusers, transformers, original checkpoints) register theirs:

  @visgen.weights.CONVERTERS.register('my_format')
  def convert(arrays: dict[str, np.ndarray], expected: dict[str, Any]
              ) -> dict[str, np.ndarray]: ...   # keyed by parameter path
"""

import dataclasses
import json
import os
from typing import Any
from typing import Callable

from flax import nnx
import jax
import numpy as np

from visgen import models
from visgen import param_tree
from visgen import sharding
from visgen import weights as weights_lib

CONVERTERS = weights_lib.CONVERTERS
FIELDS = ('model', 'source', 'weights', 'step', 'converter', 'hint')
DTYPES = {'float32': jax.numpy.float32, 'bfloat16': jax.numpy.bfloat16}


@dataclasses.dataclass(frozen=True)
class Frozen:
  """The loaded frozen components of a run.

  Attributes:
    params: name -> params pytree (nnx.State), sharded; the train step's
      `frozen` argument.
    apply: name -> apply(params, *args, method=None, **kwargs): merges the
      module and calls it (or its `method`, e.g. 'encode').
    shardings: name -> the params' NamedShardings (same structure).
    sources: name -> a description of where the weights came from.
  """
  params: dict[str, Any]
  apply: dict[str, Callable[..., Any]]
  shardings: dict[str, Any]
  sources: dict[str, str]


def make_apply(graphdef: nnx.GraphDef) -> Callable[..., Any]:
  """apply(params, *args, method=None, **kw) for any module and method."""

  def apply(params, *args, method: str | None = None, **kwargs):
    module = nnx.merge(graphdef, params)
    fn = module if method is None else getattr(module, method)
    return fn(*args, **kwargs)

  return apply


def declared_model(entry: dict) -> dict | None:
  """The model config of a frozen entry: its `model`, else the config.json
  of a visgen run's workdir or of a converted checkpoint's directory
  (`visgen.convert`: model.safetensors beside config.json); None if
  neither says."""
  model = entry.get('model')
  if model:
    return dict(model)
  source = str(entry.get('source', ''))
  try:
    kind, path = weights_lib.parse_source(source, what='frozen')
  except ValueError:
    return None
  where = path if kind == 'workdir' else os.path.dirname(path)
  try:
    with open(os.path.join(where, 'config.json')) as f:
      return dict(json.load(f)['model'])
  except (OSError, ValueError, KeyError, TypeError):
    return None


def _model_config(name: str, entry: dict, kind: str, path: str) -> dict:
  model = declared_model(entry)
  if model:
    return model
  if kind != 'workdir' and not os.path.isfile(path):
    raise FileNotFoundError(
        f'config.frozen.{name}: weight file {path} not found'
        + (f'. {entry["hint"]}' if entry.get('hint') else '.'))
  raise ValueError(
      f'config.frozen.{name} needs a model config (model=dict(name=..., '
      '...), as config.model)'
      + (f'; {path}/config.json has none.' if kind == 'workdir' else '.'))


def abstract_model(name: str, model_cfg: dict):
  """(graphdef, abstract params) of a model config, allocating nothing."""
  kw = dict(model_cfg)
  if 'name' not in kw:
    raise ValueError(f'config.frozen.{name}.model needs a "name" field; '
                     f'valid: {", ".join(models.MODELS.names())}.')
  model_name = kw.pop('name')
  if isinstance(kw.get('dtype'), str):
    if kw['dtype'] not in DTYPES:
      raise ValueError(f'Unknown model dtype {kw["dtype"]!r} in '
                       f'config.frozen.{name}.model. Valid choices: '
                       f'{", ".join(DTYPES)}.')
    kw['dtype'] = DTYPES[kw['dtype']]
  model = nnx.eval_shape(
      lambda: models.get_model(model_name, rngs=nnx.Rngs(0), **kw))
  return models.split_model(model)


def _from_file(name: str, entry: dict, kind: str, path: str,
               abstract: Any) -> Any:
  """A weight file's arrays checked, cast and placed by `abstract`."""
  what = f'Frozen component {name!r}'
  arrays = weights_lib.read_file(kind, path, what=what)
  expected = param_tree.flatten(abstract)
  convert = CONVERTERS.get(entry.get('converter') or 'identity')
  flat = convert(arrays, expected)
  weights_lib.check_shapes({k: np.shape(v) for k, v in flat.items()},
                           expected, origin=f'weight file {path}', what=what)

  def place(p, want):
    value = np.asarray(flat[p]).astype(want.dtype)
    return jax.make_array_from_callback(want.shape, want.sharding,
                                        lambda idx: value[idx])

  return param_tree.map_with_path(place, abstract)


def load_component(name: str, entry: Any, mesh, sharding_cfg
                   ) -> tuple[Any, Callable[..., Any], Any, str]:
  """(params, apply, shardings, source description) of one frozen entry."""
  entry = dict(entry)
  unknown = sorted(set(entry) - set(FIELDS))
  if unknown:
    raise ValueError(f'config.frozen.{name} has unknown fields {unknown}. '
                     f'Valid fields: {", ".join(FIELDS)}.')
  what = f'Frozen component {name!r}'
  kind, path = weights_lib.parse_source(entry.get('source'), what=what)
  if kind != 'workdir':
    try:  # Fail before building anything.
      CONVERTERS.get(entry.get('converter') or 'identity')
    except ValueError as e:
      raise ValueError(f'config.frozen.{name}.converter: {e}') from e
  graphdef, abstract_params = abstract_model(
      name, _model_config(name, entry, kind, path))
  shard = sharding.param_shardings(abstract_params, mesh, sharding_cfg)
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_params, shard)
  if kind == 'workdir':
    weights = entry.get('weights') or 'ema'
    params = weights_lib.restore_sharded(
        path, abstract, weights=weights, step=entry.get('step'), what=what)
    described = f'{path} ({weights})'
  else:
    params = _from_file(name, entry, kind, path, abstract)
    described = f'{path} ({entry.get("converter") or "identity"})'
  return params, make_apply(graphdef), shard, described


def build_frozen(config, mesh) -> Frozen:
  """Loads every `config.frozen` entry, sharded by `config.sharding`."""
  params, apply, shardings, sources = {}, {}, {}, {}
  for name, entry in (config.get('frozen') or {}).items():
    params[name], apply[name], shardings[name], sources[name] = (
        load_component(name, entry, mesh, config.sharding))
  return Frozen(params=params, apply=apply, shardings=shardings,
                sources=sources)
