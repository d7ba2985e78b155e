"""Sample and eval modes: load the latest checkpoint, use its EMA params.

  python -m visgen.main --config=C --workdir=W --mode=sample
      -> W/samples/samples_<step>.npz (ADM format: arr_0 uint8 NHWC images
         (NTHWC for video), arr_1 labels when the task has them) and a
         preview W/samples/samples_<step>.png (.gif for video)
  python -m visgen.main --config=C --workdir=W --mode=eval
      -> W/eval_<step>.json with the evaluations named in config.eval

Both go through `visgen.builder` (the same build as training) and the task
contract; the evaluations are `visgen.evaluations`.
"""

import os

from absl import logging
import jax

from visgen import builder
from visgen import evaluations
from visgen import logging_lib
from visgen import media as media_lib


def sample_main(config, workdir: str) -> str:
  """Writes the ADM-format .npz and its preview; returns the .npz path."""
  b, state, step = builder.restore(config, workdir)
  num = int(config.get('num_samples', 100))
  m = evaluations.draw(b, builder.first_ema(state),
                       jax.random.key(config.seed + 17), num=num,
                       batch=min(num, int(config.get('sample_batch', 250))))
  stem = os.path.join(workdir, 'samples', f'samples_{step:07d}')
  if jax.process_index() == 0:
    media_lib.write_samples(stem, m)
  logging.info('Wrote %d samples to %s.npz', num, stem)
  return stem + '.npz'


def eval_main(config, workdir: str) -> dict:
  b, state, step = builder.restore(config, workdir)
  results = evaluations.run_evals(b, builder.first_ema(state),
                                  jax.random.key(config.seed))
  results['step'] = step
  if jax.process_index() == 0:
    # Atomic, strict JSON (null for an undefined metric, never NaN).
    logging_lib.write_json(os.path.join(workdir, f'eval_{step:07d}.json'),
                           results)
  logging.info('Eval at step %d: %s', step, results)
  return results
