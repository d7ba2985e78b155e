"""The jitted train step: loss -> grads (with accumulation) -> AdamW -> EMA.

The step is pure: `step(state, frozen, batch, rng) -> (state, metrics)`.
`state` is donated; `frozen` (autoencoder, teacher, ... parameters, see
`visgen.frozen`) is a separate argument that is neither optimised nor
donated. The task's state (`state['task']`, e.g. the importance sampler's
loss history) is threaded through the loss, micro-batch after micro-batch.
The RNG is folded with the step number, so no RNG lives in the state.
"""

from typing import Any
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from visgen import state as state_lib

# (params, frozen, task_state, batch, rng) -> (loss, aux, new task state):
# `tasks.base.Task.loss`.
LossFn = Callable[[Any, Any, Any, Any, jax.Array],
                  tuple[jax.Array, dict, Any]]


def _mean_metrics(aux: dict) -> dict:
  """Reduces auxiliary outputs to scalars (per-sample arrays are averaged)."""
  return {k: jnp.mean(v.astype(jnp.float32)) for k, v in aux.items()
          if hasattr(v, 'dtype') and jnp.issubdtype(v.dtype, jnp.number)}


def _grads(loss_fn: LossFn, params, frozen, task_state, batch, rng,
           accum_steps: int):
  """(loss, aux, grads, task state), averaged over `accum_steps`
  micro-batches; the task state passes through them in order."""

  def scalar_loss(p, ts, b, k):
    loss, aux, new_ts = loss_fn(p, frozen, ts, b, k)
    return loss, (_mean_metrics(aux), new_ts)

  grad_fn = jax.value_and_grad(scalar_loss, has_aux=True)
  if accum_steps == 1:
    (loss, (aux, task_state)), grads = grad_fn(params, task_state, batch, rng)
    return loss, aux, grads, task_state

  def split(x):
    if x.shape[0] % accum_steps:
      raise ValueError(f'Batch {x.shape[0]} is not divisible by '
                       f'accum_steps={accum_steps}.')
    return x.reshape((accum_steps, x.shape[0] // accum_steps) + x.shape[1:])

  micro = jax.tree.map(split, batch)

  def body(carry, inputs):
    total, ts = carry
    i, b = inputs
    (loss, (aux, ts)), grads = grad_fn(params, ts, b,
                                       jax.random.fold_in(rng, i))
    total = jax.tree.map(jnp.add, total, (loss, aux, grads))
    return (total, ts), None

  b0 = jax.tree.map(lambda x: x[0], micro)
  (l0, (a0, _)), g0 = jax.eval_shape(grad_fn, params, task_state, b0, rng)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (l0, a0, g0))
  (total, task_state), _ = jax.lax.scan(
      body, (zeros, task_state), (jnp.arange(accum_steps), micro))
  loss, aux, grads = jax.tree.map(lambda x: x / accum_steps, total)
  return loss, aux, grads, task_state


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, *, accum_steps: int = 1,
                    ema_warmup: bool = False):
  """Returns the (unjitted) step; `train.py` jits it with shardings.

  Args:
    loss_fn: (params, frozen, task_state, batch, rng) -> (scalar loss, aux
      dict, new task state), e.g. a task's `loss`.
    tx: the optax transformation (its state lives in state['opt_state']).
    schedule: lr schedule, reported as a metric.
    accum_steps: micro-batches per update (batch split along axis 0).
    ema_warmup: see `state.ema_update`.
  """

  def step(state, frozen, batch, rng):
    rng = jax.random.fold_in(rng, state['step'])
    loss, aux, grads, task_state = _grads(
        loss_fn, state['params'], frozen, state.get('task', {}), batch, rng,
        accum_steps)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    ema = state_lib.ema_update(state['ema'], params, state['step'],
                               warmup=ema_warmup)
    new_state = dict(step=state['step'] + 1, params=params,
                     opt_state=opt_state, ema=ema, task=task_state)
    metrics = dict(aux, loss=loss, grad_norm=optax.global_norm(grads),
                   param_norm=optax.global_norm(params),
                   update_norm=optax.global_norm(updates),
                   lr=schedule(state['step']))
    return new_state, metrics

  return step
