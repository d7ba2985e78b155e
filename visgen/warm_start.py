"""`config.init_from`: warm-start a fresh run's parameters from another run.

  config.init_from = dict(
      source='workdir:/runs/base',   # or 'npz:PATH' / 'safetensors:PATH'
      weights='ema',                 # workdir: 'ema', 'ema:<decay>', 'raw'
      step=None,                     # workdir: None = latest checkpoint
      converter='identity',          # files: visgen.weights.CONVERTERS
      mapping=(('control/(.*)', r'encoder/\1'),   # target regex -> source
               ('(.*)', r'\1')))

`mapping` is an ordered list of (regex, replacement) pairs over '/'-joined
parameter paths (`visgen.param_tree`). Each parameter of the new model takes
the first rule whose regex matches its whole path, and is copied from the
source parameter `match.expand(replacement)`; a replacement of None keeps
the fresh initialisation, and so does a path no rule matches. The default
mapping, (('(.*)', r'\\1'),), copies every parameter from the same path.
The example initialises a ControlNet's trainable copy ('control/...') from
its base's encoder and everything else from the same path.

Only a fresh run is warm-started: a resumed run restores its own checkpoint.
The EMA copies start from the warm-started parameters too; the optimizer
state is untouched (Adam's moments start at zero either way).
"""

from typing import Any

from absl import logging
import jax
import numpy as np

from visgen import param_tree
from visgen import weights as weights_lib
from visgen.validate import UserError

FIELDS = ('source', 'weights', 'step', 'converter', 'mapping')
WHAT = 'config.init_from'


def _rules(mapping) -> list[tuple[Any, str | None]]:
  if mapping is None:
    mapping = (('(.*)', r'\1'),)
  rules = []
  for rule in mapping:
    if len(rule) != 2:
      raise UserError(f'{WHAT}.mapping entries are (regex, replacement) '
                      f'pairs, got {rule!r}.')
    (pattern,) = param_tree.compile_patterns([rule[0]], f'{WHAT}.mapping')
    rules.append((pattern, rule[1]))
  return rules


def plan(target_paths: list[str], mapping) -> dict[str, str]:
  """{target path: source path} for the parameters that are copied."""
  rules = _rules(mapping)
  used = [False] * len(rules)
  out = {}
  for path in target_paths:
    for i, (pattern, replacement) in enumerate(rules):
      m = pattern.fullmatch(path)
      if m:
        used[i] = True
        if replacement is not None:
          out[path] = m.expand(replacement)
        break
  unused = [rules[i][0].pattern for i, u in enumerate(used) if not u]
  if unused:
    raise UserError(f'{WHAT}.mapping regexes {unused} match no parameter '
                    '(a regex must match a whole /-joined path). Some '
                    f'paths: {", ".join(target_paths[:6])}.')
  return out


def load_source(cfg) -> tuple[dict[str, np.ndarray], str]:
  """({path: host array} of the source, a description of it)."""
  kind, path = weights_lib.parse_source(cfg.get('source'), what=WHAT)
  if kind == 'workdir':
    weights = cfg.get('weights') or 'ema'
    arrays = weights_lib.read_checkpoint(path, weights=weights,
                                         step=cfg.get('step'), what=WHAT)
    return arrays, f'{path} ({weights})'
  converter = cfg.get('converter') or 'identity'
  try:
    convert = weights_lib.CONVERTERS.get(converter)
  except ValueError as e:
    raise UserError(f'{WHAT}.converter: {e}') from e
  arrays = weights_lib.read_file(kind, path, what=WHAT)
  return convert(arrays, {}), f'weight file {path}'


def warm_start(state: dict, cfg) -> dict:
  """`state` with params (and every EMA copy) copied per `cfg.mapping`.

  Raises:
    ValueError: unknown fields, a mapped source path the source lacks, or
      a shape mismatch (the message names both paths and shapes).
  """
  cfg = dict(cfg)
  unknown = sorted(set(cfg) - set(FIELDS))
  if unknown:
    raise UserError(f'{WHAT} has unknown fields {unknown}. Valid fields: '
                    f'{", ".join(FIELDS)}.')
  targets = param_tree.flatten(state['params'])
  copies = plan(list(targets), cfg.get('mapping'))
  arrays, origin = load_source(cfg)
  misshapen, missing = [], []
  for dst, src in copies.items():
    want = tuple(targets[dst].shape)
    if src not in arrays:
      missing.append(f'{dst!r} <- {src!r}: {origin} has no {src!r}')
    elif tuple(arrays[src].shape) != want:
      misshapen.append(f'{dst!r} <- {src!r}: expected shape {want}, found '
                       f'{tuple(arrays[src].shape)}')
  problems = misshapen + missing
  if problems:
    raise UserError(
        f'{WHAT}: cannot copy from {origin} ({len(problems)} problems):\n  '
        + '\n  '.join(problems[:8])
        + (f'\n  ... and {len(problems) - 8} more' if len(problems) > 8
           else '') + f'\nFix {WHAT}.mapping or the source.')

  def place(tree):
    def one(path, x):
      if path not in copies:
        return x
      value = np.asarray(arrays[copies[path]]).astype(x.dtype)
      # A new buffer per tree: params and EMAs are donated separately.
      return jax.make_array_from_callback(x.shape, x.sharding,
                                          lambda idx: value[idx])

    return param_tree.map_with_path(one, tree)

  out = dict(state, params=place(state['params']),
             ema={k: place(v) for k, v in state['ema'].items()})
  logging.info('%s: %d of %d parameters copied from %s.', WHAT, len(copies),
               len(targets), origin)
  return out


def maybe_warm_start(state: dict, config) -> dict:
  """Warm-starts a freshly initialised state if `config.init_from` is set."""
  cfg = config.get('init_from')
  if not cfg or not cfg.get('source'):
    return state
  return warm_start(state, cfg)
