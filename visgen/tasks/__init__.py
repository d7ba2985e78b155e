"""Task plugins: what a batch means, which loss it trains, how to sample.

Every task implements the contract `visgen.tasks.base.Task` (batch keys and
spec, init_state, loss, sample, sample_cond, eval_cond, to_media) and is
listed in `TASKS` below, chosen by `config.task.name`. `visgen.builder`
builds it with the network's apply function and the frozen components'
apply functions bound:

  task = get_task(config, apply=apply, frozen_apply=frozen.apply)

A new task: a module here with its class, one line in `TASKS`, a test of its
contract (tests/test_tasks.py).
"""

from visgen.registry import Registry
from visgen.tasks import autoencoder
from visgen.tasks import bridge
from visgen.tasks import controlnet
from visgen.tasks import dense
from visgen.tasks import generation
from visgen.tasks import instruct_edit
from visgen.tasks import noisy_classifier
from visgen.tasks import text_to_image
from visgen.tasks import video
from visgen.tasks import video_autoencoder
from visgen.tasks import world_model
from visgen.tasks.base import Task
from visgen.tasks.base import check_task

TASKS = Registry('task')
TASKS.register('generation')(generation.GenerationTask)
TASKS.register('noisy_classifier')(noisy_classifier.NoisyClassifierTask)
TASKS.register('autoencoder')(autoencoder.AutoencoderTask)
TASKS.register('text_to_image')(text_to_image.TextToImageTask)
TASKS.register('controlnet')(controlnet.ControlNetTask)
TASKS.register('instruct_edit')(instruct_edit.InstructEditTask)
TASKS.register('bridge')(bridge.BridgeTask)
TASKS.register('video')(video.VideoTask)
TASKS.register('video_autoencoder')(
    video_autoencoder.VideoAutoencoderTask)
TASKS.register('dense')(dense.DenseTask)
TASKS.register('world_model')(world_model.WorldModelTask)


def get_task(config, *, apply=None, frozen_apply=None) -> Task:
  """Builds the task named by `config.task.name` from the whole config."""
  task = TASKS.get(config.task.name)(config, apply=apply,
                                     frozen_apply=frozen_apply)
  return check_task(task)


__all__ = ['TASKS', 'Task', 'get_task', 'generation', 'noisy_classifier']
