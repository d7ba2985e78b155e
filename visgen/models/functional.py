"""The functional boundary between NNX modules and jitted training code.

  graphdef, params = split_model(model)      # once, outside jit
  apply = make_apply(graphdef)
  out = apply(params, x_t, t, cond)           # merges inside the trace

`params` is an `nnx.State` of `nnx.Param` variables (a pytree optax can act
on). Each parameter carries logical axis names ('embed', 'mlp', 'heads',
'qkv', 'conv_in', 'conv_out', 'vocab' or None for replicated); the training
loop maps them to mesh axes with `visgen.sharding.param_shardings` and
config rules.
"""

from typing import Any
from typing import Callable
from typing import Sequence

from flax import nnx
import jax


def _is_var(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State]:
  """Splits a model into its graph definition and its parameters.

  visgen models hold only `nnx.Param` state (dropout keys are passed at call
  time), so nothing else needs carrying; a model that does is refused.
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise ValueError(
        'split_model expects a model whose only state is nnx.Param, but it '
        f'also holds {list(nnx.to_flat_state(rest).keys())[:5]}. Pass dropout '
        'RNGs at call time instead of storing nnx.Rngs in the module.')
  return graphdef, params


def make_apply(graphdef: nnx.GraphDef) -> Callable[..., Any]:
  """apply(params, x_t, t, cond, *, rngs=None, train=False, **kw)."""

  def apply(params, x_t, t, cond=None, *, rngs=None, train=False, **kwargs):
    model = nnx.merge(graphdef, params)
    if rngs is not None and not isinstance(rngs, nnx.Rngs):
      rngs = nnx.Rngs(dropout=rngs)  # A bare key: the dropout stream.
    return model(x_t, t, cond, train=train, rngs=rngs, **kwargs)

  return apply


def logical_axes(params: nnx.State) -> nnx.State:
  """The logical axis names of every parameter (a tuple, or None).

  Same structure as `params`, with each `nnx.Param` value replaced by its
  axis-name tuple; tuples are pytree nodes, so map over both trees with
  `jax.tree.map(f, axes, params, is_leaf=lambda x: isinstance(x, tuple))`
  or use `visgen.sharding.param_shardings`.
  """
  return jax.tree.map(lambda v: v.get_metadata().get('out_sharding'), params,
                      is_leaf=_is_var)


def logical_to_spec(
    names: Sequence[str | None] | None,
    rules: Sequence[tuple[str, Any]]) -> jax.sharding.PartitionSpec:
  """Maps logical names to a PartitionSpec with (logical, mesh_axes) rules.

  Names without a rule, and None, are replicated. A mesh axis is used at most
  once per array (a later dimension that maps to it is replicated).
  """
  table = dict(rules)
  used, spec = set(), []
  for name in names or ():
    mesh_axes = table.get(name) if name is not None else None
    flat = (mesh_axes,) if isinstance(mesh_axes, str) else (mesh_axes or ())
    if not flat or used & set(flat):
      spec.append(None)
    else:
      used |= set(flat)
      spec.append(mesh_axes)
  return jax.sharding.PartitionSpec(*spec)
