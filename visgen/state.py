"""The train state: a plain dict pytree, created directly sharded.

  state = {'step': int32 scalar, 'params': nnx.State, 'opt_state': ...,
           'ema': {'0p9999': params-shaped nnx.State, ...},
           'task': the task's state (`task.init_state`; {} when stateless)}

`visgen.builder` derives the shardings from `jax.eval_shape(init)` and
creates the state with `jit(init, out_shardings=...)`; the whole dict,
task state included, is what a checkpoint holds.

No RNG lives in the state: the step folds the step number into a fixed key,
so a resumed run draws exactly the numbers an uninterrupted one would.
"""

from typing import Any
from typing import Callable
from typing import Sequence

import jax
import jax.numpy as jnp



def ema_key(decay: float) -> str:
  # No '.' in keys: Orbax joins tree paths with dots.
  return f'{decay:g}'.replace('.', 'p')


def ema_decay(key: str) -> float:
  return float(key.replace('p', '.'))


def make_init(param_init: Callable[[jax.Array], Any], tx,
              ema_decays: Sequence[float],
              task_init: Callable[[jax.Array], Any] | None = None
              ) -> Callable[[jax.Array], dict]:
  """init(rng) -> state; jit it with out_shardings to create it sharded."""

  def init(rng):
    params = param_init(rng)
    return {
        'step': jnp.zeros((), jnp.int32),
        'params': params,
        'opt_state': tx.init(params),
        'ema': {ema_key(d): jax.tree.map(jnp.copy, params)
                for d in ema_decays},
        'task': ({} if task_init is None else
                 task_init(jax.random.fold_in(rng, 1))),
    }

  return init


def ema_update(ema: dict, params: Any, step: jax.Array, *,
               warmup: bool) -> dict:
  """ema <- d * ema + (1 - d) * params for every decay d in the dict.

  With `warmup`, d is min(d, (1 + n) / (10 + n)) so early EMAs are not
  dominated by the random initialisation in short runs.
  """
  out = {}
  for key, tree in ema.items():
    decay = jnp.float32(ema_decay(key))
    if warmup:
      n = step.astype(jnp.float32)
      decay = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
    out[key] = jax.tree.map(lambda e, p, d=decay: d * e + (1.0 - d) * p,
                            tree, params)
  return out
