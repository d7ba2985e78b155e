"""The entry point: train, sample or evaluate one config.

  python -m visgen.main --config=configs/quickstart.py --workdir=/tmp/qs
  python -m visgen.main --config=configs/dit_imagenet.py:runlocal \
      --workdir=/tmp/dit --config.total_steps=10 --mode=train

Intentionally short: logic lives in importable modules (train.py,
sample.py). Multi-process runs (launch/) set the coordinator through
environment variables; see `_maybe_init_distributed`.
"""

import os
import time

# The reported wall time starts before the (slow) imports.
_START = time.time()

from visgen import hugepages  # noqa: E402  (no heavy imports)

if __name__ == '__main__':
  # Re-executes once with glibc huge pages before JAX allocates anything.
  hugepages.ensure_hugepages()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

# pylint: enable=g-import-not-at-top,wrong-import-position

config_flags.DEFINE_config_file(
    'config', None, 'Config file (configs/X.py[:args]).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints and logs.')
flags.DEFINE_enum('mode', 'train', ['train', 'sample', 'eval'], 'What to do.')
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def _maybe_init_distributed():
  """jax.distributed.initialize() when a launcher asks for multi-process.

  VISGEN_COORDINATOR (host:port), VISGEN_NUM_PROCESSES, VISGEN_PROCESS_ID
  set explicitly (local.sh); VISGEN_DISTRIBUTED=1 lets JAX auto-detect
  (TPU VMs, SLURM). Otherwise a single process needs no initialisation.
  """
  import jax  # pylint: disable=g-import-not-at-top

  if os.environ.get('VISGEN_COORDINATOR'):
    jax.distributed.initialize(
        coordinator_address=os.environ['VISGEN_COORDINATOR'],
        num_processes=int(os.environ['VISGEN_NUM_PROCESSES']),
        process_id=int(os.environ['VISGEN_PROCESS_ID']))
  elif os.environ.get('VISGEN_DISTRIBUTED') == '1':
    jax.distributed.initialize()


def main(argv):
  del argv
  _maybe_init_distributed()
  from visgen import logging_lib  # pylint: disable=g-import-not-at-top

  logging_lib.quiet_library_logs()
  from visgen import sample  # pylint: disable=g-import-not-at-top
  from visgen import train  # pylint: disable=g-import-not-at-top

  if FLAGS.mode == 'train':
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir, start_time=_START)
  elif FLAGS.mode == 'sample':
    sample.sample_main(FLAGS.config, FLAGS.workdir)
  else:
    sample.eval_main(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
