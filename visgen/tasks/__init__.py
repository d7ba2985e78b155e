"""Task plugins: what a batch means, which loss it trains, how to sample.

A task turns a batch into `(x0, cond)`, calls the design-space loss and the
samplers, and names what to show; the training loop never looks inside.
New tasks register here (`TASKS.register('name')`) and are chosen by
`config.task.name`.

Interface (see `generation.GenerationTask`):
  task = get_task(config)
  task.loss(apply, params, frozen, batch, key) -> (scalar, aux)
  task.sample(apply, params, frozen, cond, key, guidance) -> x in [-1, 1]
  task.sample_cond(n) -> cond dict for a grid (one row per class)
  task.x_shape -> per-example data shape
  task.batch_keys -> (optional) batch entries sent to the devices; default:
    every numeric entry
"""

from visgen.registry import Registry

TASKS = Registry('task')

# Built-in tasks register themselves on import.
# pylint: disable=wrong-import-position
from visgen.tasks import generation  # noqa: E402
from visgen.tasks import noisy_classifier  # noqa: E402

# pylint: enable=wrong-import-position


def get_task(config):
  """Builds the task named by `config.task.name` from the whole config."""
  return TASKS.get(config.task.name)(config)


__all__ = ['TASKS', 'get_task', 'generation', 'noisy_classifier']
