"""Parameters by '/'-joined path: flatten, rebuild, select by regex.

A parameter's path is its position in the params pytree with the keys joined
by '/', e.g. 'blocks/0/fc1/kernel' (the trailing 'value' of an
`nnx.Variable`, and of its Orbax-saved form, is dropped). The same strings
name parameters in frozen-weight files (`visgen.frozen`), warm-start
mappings (`visgen.warm_start`) and trainable masks (`visgen.optim`), so a
regex written for one works for all of them.
"""

import re
from typing import Any
from typing import Callable
from typing import Iterable

import jax


def _key_str(key) -> str:
  if isinstance(key, jax.tree_util.DictKey):
    return str(key.key)
  if isinstance(key, jax.tree_util.GetAttrKey):
    return key.name
  if isinstance(key, jax.tree_util.SequenceKey):
    return str(key.idx)
  if isinstance(key, jax.tree_util.FlattenedIndexKey):
    return str(key.key)
  return str(key)


def path_str(keypath) -> str:
  """'/'-joined path of a jax keypath, without a trailing 'value' key."""
  parts = [_key_str(k) for k in keypath]
  if len(parts) > 1 and parts[-1] == 'value':
    parts = parts[:-1]
  return '/'.join(parts)


def flatten(tree: Any, *, is_leaf: Callable[[Any], bool] | None = None
            ) -> dict[str, Any]:
  """{path: leaf} in tree order."""
  out = {}
  for keypath, leaf in jax.tree_util.tree_leaves_with_path(tree,
                                                           is_leaf=is_leaf):
    path = path_str(keypath)
    if path in out:
      raise ValueError(f'Two leaves share the parameter path {path!r}.')
    out[path] = leaf
  return out


def map_with_path(fn: Callable[[str, Any], Any], tree: Any) -> Any:
  """The tree with every leaf replaced by fn(path, leaf)."""
  return jax.tree_util.tree_map_with_path(
      lambda kp, x: fn(path_str(kp), x), tree)


def rebuild(tree: Any, flat: dict[str, Any]) -> Any:
  """`tree` with each leaf replaced by `flat[path]` (all paths required)."""
  missing = [p for p in flatten(tree) if p not in flat]
  if missing:
    raise KeyError(f'No value for parameter paths {missing[:8]}.')
  return map_with_path(lambda p, _: flat[p], tree)


def compile_patterns(patterns: Iterable[str] | str | None,
                     what: str) -> list[re.Pattern]:
  """Compiles regexes; a bad one raises ValueError naming `what`."""
  if patterns is None:
    return []
  if isinstance(patterns, str):
    patterns = [patterns]
  out = []
  for p in patterns:
    try:
      out.append(re.compile(p))
    except re.error as e:
      raise ValueError(f'{what}: invalid regex {p!r}: {e}.') from e
  return out


def matches(patterns: list[re.Pattern], path: str) -> bool:
  """True if any pattern matches the whole path (re.fullmatch)."""
  return any(p.fullmatch(path) for p in patterns)
