"""The task contract: the only way the loop, sample/eval mode, the benchmark
and the evaluators talk to a task.

A task owns what a batch means (which entries it reads, how they become
x0 and conditioning), its loss, its sampling, the conditioning of sample
grids and evaluations, and how its samples are shown (`visgen.media`). It is
built once by `visgen.builder` with its network's `apply` and the frozen
components' apply functions bound, so no caller passes networks around:

  task = TASKS.get(config.task.name)(config, apply=apply,
                                     frozen_apply=frozen.apply)
  state = task.init_state(key)                 # pytree, may be {}
  loss, aux, state = task.loss(params, frozen, state, batch, key)
  x = task.sample(params, frozen, cond, key, n=n, guidance=s)
  media = task.to_media(x, cond)               # uint8 images / video + rows

`params` are the trainable parameters; `frozen` the frozen components'
parameters (a dict name -> pytree, the step's non-donated argument). The task
state lives in the train state (`state['task']`), is threaded through the
jitted step and checkpointed with it, so a stateful objective (ADM's
importance sampler of t) resumes exactly. `aux` values are per-example or
scalar numbers; the step averages them into metrics.
"""

from typing import Any
from typing import Protocol
from typing import runtime_checkable

import jax
import numpy as np

from visgen import media as media_lib
from visgen.data import preprocess

Batch = dict[str, Any]
Cond = dict[str, Any]


@runtime_checkable
class Task(Protocol):
  """What every task provides (see the module docstring)."""

  # Batch entries the task reads; only these are sent to the devices.
  batch_keys: tuple[str, ...]

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Shape and dtype of every entry of `batch_keys` for a global batch
    (synthetic batches for the benchmark, shape checks)."""

  def init_state(self, key: jax.Array) -> Any:
    """The task's initial state (a pytree of arrays; {} when stateless)."""

  def loss(self, params: Any, frozen: Any, task_state: Any, batch: Batch,
           key: jax.Array) -> tuple[jax.Array, dict, Any]:
    """(scalar loss, aux dict, new task state) of one batch."""

  def sample(self, params: Any, frozen: Any, cond: Cond, key: jax.Array, *,
             n: int, guidance: Any = 1.0) -> Any:
    """n samples for `cond` (guidance may be a traced scalar)."""

  def sample_cond(self, n: int) -> Cond:
    """Host-side conditioning of n samples for grids and evaluation (e.g.
    class labels, one grid row per class)."""

  def eval_cond(self, batch: Batch) -> Cond:
    """The conditioning of a held-out batch (no dropout): sample what the
    data shows (its labels, captions, control maps, ...)."""

  def to_media(self, samples: Any, cond: Cond) -> media_lib.Media:
    """Host-side media of samples (uint8, with the rows they are shown in
    and, where the task has one, the condition shown beside each)."""


def check_task(task: Any) -> Task:
  """`task` if it implements the contract; else a TypeError naming what is
  missing (a new task class found at build time, not mid-training)."""
  if isinstance(task, Task):
    return task
  names = [n for n in ('batch_keys', 'batch_spec', 'init_state', 'loss',
                       'sample', 'sample_cond', 'eval_cond', 'to_media')
           if not hasattr(task, n)]
  raise TypeError(f'{type(task).__name__} does not implement the task '
                  f'contract (visgen.tasks.base.Task); missing: '
                  f'{", ".join(names)}.')


def class_labels(n: int, num_classes: int) -> np.ndarray:
  """n labels cycling through the classes (0, 1, ..., K-1, 0, ...): every
  prefix is as class-balanced as it can be (grids group them by class)."""
  return np.arange(n, dtype=np.int32) % num_classes


def cond_slice(cond: Cond, start: int, size: int, pad_to: int) -> Cond:
  """Entries [start, start + size) of every condition array, padded to
  `pad_to` by repeating the last (one compiled sampler for every call)."""
  def one(a):
    part = np.asarray(a)[start:start + size]
    return np.concatenate([part, np.repeat(part[-1:], pad_to - size, 0)])

  return jax.tree.map(one, cond)


def array_media(samples: Any, cond: Cond, *, x_shape: tuple[int, ...],
                num_classes: int = 0) -> media_lib.Media:
  """Media of samples in [-1, 1] shaped (N,) + x_shape: uint8 images for
  (H, W, C), video for (T, H, W, C), float arrays otherwise; class labels
  from `cond['label']` (grids show one row per class)."""
  x = np.asarray(samples, np.float32).reshape((-1,) + tuple(x_shape))
  kind = {3: 'image', 4: 'video'}.get(len(x_shape), 'array')
  if kind != 'array':
    x = preprocess.to_uint8(x)
  labels = cond.get('label') if num_classes else None
  labels = None if labels is None else np.asarray(labels)
  return media_lib.Media(x, kind=kind, labels=labels)
