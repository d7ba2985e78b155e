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
  guidance = jnp.float32(config.sampler.get('cfg_scale', 1.0))
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


@EVALS.register('features')
def feature_metrics(config, b, mesh, params, rng, *, feature_net='digits',
                    reference='digits:test', num_samples=500, batch=250,
                    image_size=None) -> dict[str, float]:
  """The evaluator engineer's `InLoopEvaluator` on fresh EMA samples.

  Reports feature-space FID / precision / recall (and their real-against-
  real floors) and, for class-conditional tasks, `class_accuracy`: the
  fraction of samples the feature net's classifier (trained on the real
  train split) labels with the class they were drawn for.
  """
  from visgen.evaluators import in_loop  # pylint: disable=g-import-not-at-top

  task = b['task']
  fn = train_lib.make_sample_fn(b, mesh, batch)
  guidance = jnp.float32(config.sampler.get('cfg_scale', 1.0))

  def sample_fn(key, n):
    labels = np.arange(batch, dtype=np.int32) % max(task.num_classes, 1)
    cond = {'label': labels} if task.num_classes else {}
    x = preprocess.to_uint8(fn(params, cond, key, guidance))[:n]
    return (x, labels[:n]) if task.num_classes else x

  evaluator = in_loop.InLoopEvaluator(
      feature_net=feature_net, reference=reference, num_samples=num_samples,
      image_size=image_size or task.x_shape[0], batch_size=batch)
  out = evaluator.run(sample_fn, rng)
  key = f'{feature_net}_class_accuracy'
  if key in out:
    out['class_accuracy'] = out[key]
  return out


@EVALS.register('bits_per_dim')
def bits_per_dim_metric(config, b, mesh, params, rng, *, split='test',
                        num_images=256, batch=128, steps=50,
                        divergence='hutchinson') -> dict[str, float]:
  """Bits/dim of the test split under the probability-flow ODE of the EMA
  model (unconditional: the null class for class-conditional models).

  The core's `samplers.likelihood.ode_log_likelihood` integrates the
  log-density (RK4, `steps` steps, Hutchinson or exact divergence); the
  uniform-dequantisation offset is `evaluators.bits_per_dim`'s.
  """
  from visgen.evaluators import bits_per_dim as bpd_lib  # pylint: disable=g-import-not-at-top
  from visgen.samplers import likelihood  # pylint: disable=g-import-not-at-top

  del mesh
  task, apply = b['task'], b['apply']
  source = train_lib.get_source(config.data, split)
  num = min(num_images, len(source)) // batch * batch
  if num == 0:
    raise ValueError(f'bits_per_dim needs at least batch={batch} images; the '
                     f'{split!r} split has {len(source)}.')
  images = np.stack([source[i]['image'] for i in range(num)])
  cond = ({'label': jnp.full((batch,), task.num_classes, jnp.int32)}
          if task.num_classes else {})

  @jax.jit
  def nll_fn(y, key):
    x = y.reshape(y.shape[0], -1) if task.flatten else y
    logp, _ = likelihood.ode_log_likelihood(
        lambda x_t, t, c: apply(params, x_t, t, c), x, path=task.path,
        prediction=task.prediction, cond=cond, divergence=divergence,
        key=key, num_steps=steps)
    return -logp

  value = bpd_lib.bits_per_dim(nll_fn, images, key=rng, batch_size=batch)
  return {'bits_per_dim': value, 'bits_per_dim_images': num}


def run_evals(config, b, mesh, params, rng) -> dict[str, Any]:
  """Runs every evaluation in `config.eval` (a dict name -> kwargs)."""
  results = {}
  for i, (name, kw) in enumerate(sorted(config.get('eval', {}).items())):
    results.update(EVALS.get(name)(config, b, mesh, params,
                                   jax.random.fold_in(rng, i), **dict(kw)))
  return results


def restore_params(config, workdir):
  """(mesh, built parts, EMA params, step) of the latest checkpoint."""
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


def _grid_subset(images, labels, num_classes, per_row: int = 10):
  """At most `per_row` images per class (one row each), or per_row^2.

  The .npz holds every sample; the PNG is a preview and must stay small even
  for 50k samples.
  """
  if not num_classes:
    return images[:per_row**2]
  per_class = min(per_row, *(int(np.sum(labels == c))
                             for c in range(num_classes)))
  idx = [np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)]
  return images[np.concatenate(idx)]


def sample_main(config, workdir: str) -> str:
  """Writes the ADM-format .npz and a PNG grid; returns the .npz path."""
  mesh, b, params, step = restore_params(config, workdir)
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
    shown = _grid_subset(images, labels, b['task'].num_classes)
    grid = logging_lib.image_grid(shown, b['task'].grid_rows(len(shown)))
    logging_lib.save_png(path[:-4] + '.png', grid, upscale=4)
  logging.info('Wrote %d samples to %s', num, path)
  return path


def eval_main(config, workdir: str) -> dict:
  mesh, b, params, step = restore_params(config, workdir)
  results = run_evals(config, b, mesh, params, jax.random.key(config.seed))
  results['step'] = step
  if jax.process_index() == 0:
    with open(os.path.join(workdir, f'eval_{step:07d}.json'), 'w') as f:
      json.dump(results, f, indent=2)
  logging.info('Eval at step %d: %s', step, results)
  return results
