"""The one training loop: config -> sharded state -> steps -> checkpoints.

  python -m visgen.main --config=configs/quickstart.py --workdir=/tmp/qs

Task-agnostic: the task plugin (`config.task.name`) turns batches into a loss
and draws samples; the loop only builds the model, the optimizer and the
sharded state, steps, logs, checkpoints, samples and evaluates. Sections
follow big_vision's train.py.
"""

import json
import os
import time
from typing import Any

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from visgen import checkpoint as ckpt_lib
from visgen import logging_lib
from visgen import models
from visgen import optim
from visgen import sharding
from visgen import state as state_lib
from visgen import tasks
from visgen import train_step as step_lib
from visgen.data import pipeline
from visgen.data import preprocess

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


# ----------------------------------------------------------------------------
# Building blocks shared with sample/eval mode (visgen/sample.py).
# ----------------------------------------------------------------------------


def model_kwargs(config) -> tuple[str, dict]:
  kw = dict(config.model)
  name = kw.pop('name')
  if isinstance(kw.get('dtype'), str):
    if kw['dtype'] not in DTYPES:
      raise ValueError(f'Unknown model dtype {kw["dtype"]!r}. Valid choices: '
                       f'{", ".join(DTYPES)}.')
    kw['dtype'] = DTYPES[kw['dtype']]
  return name, kw


def build(config, mesh):
  """Model, task, optimizer and the abstract sharded state (nothing run).

  Returns a dict with graphdef, apply, task, tx, schedule, init (rng ->
  state), state shardings and the abstract state (with shardings).
  """
  name, kw = model_kwargs(config)
  # The abstract model gives the graph and the logical axes without
  # allocating anything; the real parameters are created inside `init`.
  abstract_model = nnx.eval_shape(
      lambda: models.get_model(name, rngs=nnx.Rngs(0), **kw))
  graphdef, abstract_params = models.split_model(abstract_model)

  def param_init(rng):
    return models.split_model(
        models.get_model(name, rngs=nnx.Rngs(rng), **kw))[1]

  tx, schedule = optim.make_optimizer(config.optim, config.total_steps)
  init = state_lib.make_init(param_init, tx, config.ema_decays)
  abstract = jax.eval_shape(init, jax.random.key(0))
  p_shard = sharding.param_shardings(abstract_params, mesh, config.sharding)
  shardings = sharding.tree_shardings(abstract, abstract['params'], p_shard,
                                      mesh)
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract, shardings)
  return dict(graphdef=graphdef, apply=models.make_apply(graphdef),
              task=tasks.get_task(config), tx=tx, schedule=schedule,
              init=init, shardings=shardings, abstract=abstract,
              abstract_params=abstract_params)


def make_sample_fn(b, mesh, n: int):
  """jit(params, cond, key, guidance) -> n samples (replicated)."""
  task, apply = b['task'], b['apply']

  def sample(params, cond, key, guidance):
    return task.sample(apply, params, {}, cond, key, n=n, guidance=guidance)

  return jax.jit(sample, out_shardings=sharding.replicated(mesh))


def get_source(cfg, split: str):
  """The data engineer's source registry (`visgen.data.get_source`)."""
  from visgen import data  # pylint: disable=g-import-not-at-top

  kw = dict(cfg)
  name = kw.pop('name')
  for k in ('batch_size', 'flip', 'num_threads'):
    kw.pop(k, None)
  return data.get_source(name, split=split, **kw)


def load_train_source(config):
  """The training source, after checking every external input exists.

  Latent-space configs (`config.autoencoder`) need both the dataset and the
  autoencoder weight file; when either is missing the error names both, so
  one message says everything there is to prepare.
  """
  ae = config.get('autoencoder')
  if not ae:
    return get_source(config.data, 'train')
  problems = []
  ae_path = os.path.expanduser(ae.path)
  if not os.path.exists(ae_path):
    problems.append(f'autoencoder weight file not found: {ae_path} (set '
                    f'--config.autoencoder.path; {ae.name} weights)')
  try:
    source = get_source(config.data, 'train')
  except Exception as e:  # pylint: disable=broad-except
    problems.append(f'dataset {config.data.name!r} unavailable: {e}')
  if problems:
    raise FileNotFoundError(
        'This latent-space config needs (1) the dataset '
        f'{config.data.name!r} prepared for TFDS and (2) the autoencoder '
        f'weight file {ae_path}. Missing:\n  - ' + '\n  - '.join(problems))
  raise NotImplementedError(
      'Encoding images with a frozen autoencoder inside the loop is not '
      'implemented yet; pre-encode the dataset with visgen.data.latents and '
      f'train on the latents ({len(source)} images found).')


def first_ema(state) -> Any:
  """The EMA params of the first decay (or the raw params without EMA)."""
  return next(iter(state['ema'].values())) if state['ema'] else (
      state['params'])


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------


def train_and_evaluate(config, workdir: str, *,
                       start_time: float | None = None) -> dict:
  """Trains (resuming from `workdir` if it holds checkpoints), then evaluates.

  Returns the final metrics (also written to WORKDIR/metrics.json).
  """
  start_time = time.time() if start_time is None else start_time
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0

  # -- Set up the mesh ---------------------------------------------------------
  mesh = sharding.make_mesh(config.sharding.mesh)
  logging.info('Process %d/%d, %d devices, mesh %s', jax.process_index(),
               jax.process_count(), jax.device_count(), dict(mesh.shape))

  # -- Model, task, optimizer (abstract) ---------------------------------------
  b = build(config, mesh)
  task = b['task']

  # -- Checkpoints: refuse a foreign workdir before writing anything -----------
  ckpt = ckpt_lib.Checkpointer(
      workdir, every=config.ckpt_every, keep_last=config.keep_last,
      keep_every=config.keep_every,
      fp=ckpt_lib.fingerprint(config, b['abstract_params']))
  ckpt_lib.PREEMPTION.install()
  if is_main:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  writer = logging_lib.MetricWriter(workdir)

  # -- Input pipeline ----------------------------------------------------------
  source = load_train_source(config)
  data_iter = pipeline.make_iterator(
      source, batch_size=config.data.batch_size, seed=config.seed,
      flip=config.data.get('flip', False),
      num_threads=config.data.get('num_threads', 0))
  batch_axes = sharding.batch_axes(mesh, config.sharding.rules)

  def next_batch():
    # Only what the task consumes goes to the devices (scene datasets also
    # carry captions, masks, keypoints, ...).
    raw = next(data_iter)
    keys = getattr(task, 'batch_keys', None) or [
        k for k, v in raw.items() if np.asarray(v).dtype.kind in 'biuf']
    local = {k: raw[k] for k in keys}
    return pipeline.make_global_array(local, mesh, batch_axes=batch_axes)

  # -- Create or restore the state, directly sharded ---------------------------
  rng = jax.random.key(config.seed)
  restored = ckpt.restore(b['abstract'], data_iter)
  if restored is None:
    state = jax.jit(b['init'], out_shardings=b['shardings'])(
        jax.random.fold_in(rng, 1))
    first_step = 0
  else:
    state, first_step = restored
  logging_lib.log_parameter_overview(state['params'])

  # -- Jitted functions --------------------------------------------------------
  loss_fn = lambda p, fr, bt, k: task.loss(b['apply'], p, fr, bt, k)
  step_fn = step_lib.make_train_step(
      loss_fn, b['tx'], b['schedule'],
      accum_steps=config.optim.get('accum_steps', 1),
      ema_warmup=config.ema_warmup)
  repl = sharding.replicated(mesh)
  train_step = jax.jit(step_fn, donate_argnums=(0,),
                       out_shardings=(b['shardings'], repl))
  frozen = {}  # Frozen parts (autoencoder, teacher): none yet.
  step_rng = jax.random.fold_in(rng, 2)
  n_grid = int(config.get('num_grid_samples', 100))
  sample_grid = make_sample_fn(b, mesh, n_grid)
  guidance = float(config.sampler.get('cfg_scale', 1.0))

  def write_grid(st, step, path=None):
    if not n_grid:  # Tests and benchmarks may skip sampling.
      return None
    cond = task.sample_cond(n_grid)
    x = sample_grid(first_ema(st), cond, jax.random.fold_in(rng, 3),
                    jnp.float32(guidance))
    grid = logging_lib.image_grid(preprocess.to_uint8(x),
                                  task.grid_rows(x.shape[0]))
    return writer.write_image(step, 'samples', grid, path=path)

  # Evaluations (shared with --mode=eval); imported here, not at the top,
  # because sample.py builds on this module.
  from visgen import sample as sample_lib  # pylint: disable=g-import-not-at-top

  # -- Train loop --------------------------------------------------------------
  total = config.total_steps
  progress = logging_lib.Progress(first_step, total)
  pending = None  # (step, metrics) fetched one step late.
  last_metrics: dict[str, float] = {}

  def fetch(step, metrics):
    host = jax.device_get(metrics)
    if not np.isfinite(host['loss']):
      raise FloatingPointError(
          f'Non-finite loss {host["loss"]} at step {step}; stopping. The '
          f'last good checkpoint (step {ckpt.latest_step()}) in '
          f'{ckpt.directory} is intact. Lower optim.lr, enable '
          'optim.grad_clip, or use model.dtype=float32.')
    return {k: float(v) for k, v in host.items()}

  step = first_step
  try:
    for step in range(first_step + 1, total + 1):
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, metrics = train_step(state, frozen, next_batch(), step_rng)
      if pending is not None:
        last_metrics = fetch(*pending)
        if pending[0] % config.log_every == 0 or pending[0] == first_step + 1:
          line, rate = progress.line(pending[0], last_metrics)
          logging.info('%s', line)
          writer.write_scalars(pending[0], dict(last_metrics,
                                                steps_per_s=rate))
      pending = (step, metrics)
      preempted = ckpt.reached_preemption(step)
      if step % config.ckpt_every == 0 or step == total or preempted:
        last_metrics = fetch(*pending)  # Never checkpoint a NaN state.
        ckpt.save(step, state, data_iter, force=True)
      if preempted:
        writer.write_scalars(step, last_metrics)
        ckpt.wait()
        logging.info('Preempted (SIGTERM) at step %d: checkpoint saved, '
                     'exiting cleanly.', step)
        writer.close()
        ckpt.close()
        return {'preempted_at_step': step}
      if config.sample_every and step % config.sample_every == 0:
        write_grid(state, step)
      if config.eval_every and step % config.eval_every == 0:
        writer.write_scalars(step, sample_lib.run_evals(
            config, b, mesh, first_ema(state), jax.random.fold_in(rng, 5)))
    if pending is not None:
      last_metrics = fetch(*pending)
      writer.write_scalars(pending[0], last_metrics)
  finally:
    ckpt.wait()

  # -- Final samples and evaluation --------------------------------------------
  train_time = time.time() - start_time
  results = {'steps': step, 'train_wall_time_s': train_time,
             'final_loss': last_metrics.get('loss', float('nan'))}
  if is_main:
    write_grid(state, step, path=os.path.join(workdir, 'samples.png'))
  results.update(sample_lib.run_evals(config, b, mesh, first_ema(state),
                                      jax.random.fold_in(rng, 4)))
  results['wall_time_s'] = time.time() - start_time
  writer.write_scalars(step, {k: v for k, v in results.items()
                              if isinstance(v, (int, float))})
  if is_main:
    with open(os.path.join(workdir, 'metrics.json'), 'w') as f:
      json.dump(results, f, indent=2)
  logging.info('Done: %s', results)
  writer.close()
  ckpt.close()
  return results
