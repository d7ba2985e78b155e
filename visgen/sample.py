"""Sample and eval modes: load the latest checkpoint, use its EMA params.

  python -m visgen.main --config=C --workdir=W --mode=sample
      -> W/samples/samples_<step>.npz (ADM format: arr_0 uint8 NHWC, arr_1
         labels when class-conditional) and W/samples/samples_<step>.png
  python -m visgen.main --config=C --workdir=W --mode=eval
      -> W/eval_<step>.json with the evaluators named in config.eval

The evaluations (`EVALS`) are shared with the end of training.
"""

import json
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from visgen import checkpoint as ckpt_lib
from visgen import logging_lib
from visgen import sharding
from visgen import train as train_lib
from visgen.data import preprocess
from visgen.registry import Registry

EVALS = Registry('evaluation')


def draw(config, b, mesh, params, rng, *, num: int, batch: int,
         labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """`num` uint8 samples (and their labels), `batch` per jitted call.

  Labels cycle through the classes unless given; one compiled function
  serves every call (the last batch is padded).
  """
  task = b['task']
  fn = train_lib.make_sample_fn(b, mesh, batch)
  guidance = jnp.float32(config.sampler.get('cfg_scale', 0.0))
  if labels is None and task.num_classes:
    labels = np.arange(num, dtype=np.int32) % task.num_classes
  out = []
  for i in range(0, num, batch):
    cond = {}
    if task.num_classes:
      chunk = labels[i:i + batch]
      cond = {'label': np.pad(chunk, (0, batch - len(chunk)))}
    x = fn(params, cond, jax.random.fold_in(rng, i), guidance)
    out.append(preprocess.to_uint8(x)[:min(batch, num - i)])
  images = np.concatenate(out)
  return images, (labels if labels is not None else np.zeros((0,), np.int32))


@EVALS.register('class_accuracy')
def class_accuracy(config, b, mesh, params, rng, *, num_per_class: int = 50,
                   batch: int = 250, **kw) -> dict[str, float]:
  """Fraction of class-conditional samples the digits classifier agrees with.

  With `fid=True`, also digits-feature FID / precision / recall against the
  test split and their real-against-real floor (evaluator's `digits_fid`).
  """
  from visgen.evaluators import digits  # pylint: disable=g-import-not-at-top

  num = num_per_class * b['task'].num_classes
  images, labels = draw(config, b, mesh, params, rng, num=num, batch=batch)
  out = {'class_accuracy': float(digits.class_accuracy(images, labels))}
  if kw.get('fid') and hasattr(digits, 'feature_metrics'):
    out.update(digits.feature_metrics(images))
  return out


def run_evals(config, b, mesh, params, rng) -> dict[str, Any]:
  """Runs every evaluation in `config.eval` (a dict name -> kwargs)."""
  results = {}
  for i, (name, kw) in enumerate(sorted(config.get('eval', {}).items())):
    results.update(EVALS.get(name)(config, b, mesh, params,
                                   jax.random.fold_in(rng, i), **dict(kw)))
  return results


def _restore_params(config, workdir):
  mesh = sharding.make_mesh(config.sharding.mesh)
  b = train_lib.build(config, mesh)
  ckpt = ckpt_lib.Checkpointer(
      workdir, every=1, keep_last=1,
      fp=ckpt_lib.fingerprint(config, b['abstract_params']), read_only=True)
  restored = ckpt.restore(b['abstract'])
  if restored is None:
    raise FileNotFoundError(
        f'No checkpoint in {ckpt.directory}: train first with --mode=train '
        'and the same --workdir.')
  state, step = restored
  ckpt.close()
  return mesh, b, train_lib.first_ema(state), step


def sample_main(config, workdir: str) -> str:
  """Writes the ADM-format .npz and a PNG grid; returns the .npz path."""
  mesh, b, params, step = _restore_params(config, workdir)
  num = int(config.get('num_samples', 100))
  images, labels = draw(config, b, mesh, params,
                        jax.random.key(config.seed + 17), num=num,
                        batch=min(num, int(config.get('sample_batch', 250))))
  out_dir = os.path.join(workdir, 'samples')
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f'samples_{step:07d}.npz')
  if jax.process_index() == 0:
    arrays = {'arr_0': images}
    if b['task'].num_classes:
      arrays['arr_1'] = labels
    np.savez(path, **arrays)
    order = np.argsort(labels, kind='stable') if len(labels) else slice(None)
    grid = logging_lib.image_grid(images[order],
                                  b['task'].grid_rows(len(images)))
    logging_lib.save_png(path[:-4] + '.png', grid, upscale=4)
  logging.info('Wrote %d samples to %s', num, path)
  return path


def eval_main(config, workdir: str) -> dict:
  mesh, b, params, step = _restore_params(config, workdir)
  results = run_evals(config, b, mesh, params, jax.random.key(config.seed))
  results['step'] = step
  if jax.process_index() == 0:
    with open(os.path.join(workdir, f'eval_{step:07d}.json'), 'w') as f:
      json.dump(results, f, indent=2)
  logging.info('Eval at step %d: %s', step, results)
  return results
