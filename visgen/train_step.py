"""The jitted train step: loss -> grads (with accumulation) -> AdamW -> EMA.

The step is pure: `step(state, frozen, batch, rng) -> (state, metrics)`.
`state` is donated; `frozen` (autoencoder, teacher, ... parameters; an empty
dict for now) is a separate argument that is neither optimised nor donated.
The RNG is folded with the step number, so no RNG lives in the state.
"""

from typing import Any
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from visgen import state as state_lib

LossFn = Callable[[Any, Any, Any, jax.Array], tuple[jax.Array, dict]]


def _mean_metrics(aux: dict) -> dict:
  """Reduces auxiliary outputs to scalars (per-sample arrays are averaged)."""
  return {k: jnp.mean(v.astype(jnp.float32)) for k, v in aux.items()
          if hasattr(v, 'dtype') and jnp.issubdtype(v.dtype, jnp.number)}


def _grads(loss_fn: LossFn, params, frozen, batch, rng, accum_steps: int):
  """(loss, aux, grads), averaged over `accum_steps` micro-batches."""
  grad_fn = jax.value_and_grad(
      lambda p, b, k: _scalar_aux(*loss_fn(p, frozen, b, k)), has_aux=True)
  if accum_steps == 1:
    (loss, aux), grads = grad_fn(params, batch, rng)
    return loss, aux, grads

  def split(x):
    if x.shape[0] % accum_steps:
      raise ValueError(f'Batch {x.shape[0]} is not divisible by '
                       f'accum_steps={accum_steps}.')
    return x.reshape((accum_steps, x.shape[0] // accum_steps) + x.shape[1:])

  micro = jax.tree.map(split, batch)

  def body(carry, inputs):
    i, b = inputs
    out = grad_fn(params, b, jax.random.fold_in(rng, i))
    return jax.tree.map(jnp.add, carry, out), None

  b0 = jax.tree.map(lambda x: x[0], micro)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                       jax.eval_shape(grad_fn, params, b0, rng))
  total, _ = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), micro))
  (loss, aux), grads = jax.tree.map(lambda x: x / accum_steps, total)
  return loss, aux, grads


def _scalar_aux(loss, aux):
  return loss, _mean_metrics(aux)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, *, accum_steps: int = 1,
                    ema_warmup: bool = False):
  """Returns the (unjitted) step; `train.py` jits it with shardings.

  Args:
    loss_fn: (params, frozen, batch, rng) -> (scalar loss, aux dict).
    tx: the optax transformation (its state lives in state['opt_state']).
    schedule: lr schedule, reported as a metric.
    accum_steps: micro-batches per update (batch split along axis 0).
    ema_warmup: see `state.ema_update`.
  """

  def step(state, frozen, batch, rng):
    rng = jax.random.fold_in(rng, state['step'])
    loss, aux, grads = _grads(loss_fn, state['params'], frozen, batch, rng,
                              accum_steps)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    ema = state_lib.ema_update(state['ema'], params, state['step'],
                               warmup=ema_warmup)
    new_state = dict(step=state['step'] + 1, params=params,
                     opt_state=opt_state, ema=ema)
    metrics = dict(aux, loss=loss, grad_norm=optax.global_norm(grads),
                   param_norm=optax.global_norm(params),
                   update_norm=optax.global_norm(updates),
                   lr=schedule(state['step']))
    return new_state, metrics

  return step
