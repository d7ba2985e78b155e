"""The one training loop: config -> sharded state -> steps -> checkpoints.

  python -m visgen.main --config=configs/quickstart.py --workdir=/tmp/qs

Task-agnostic: `visgen.builder` builds the model, frozen parts, task,
optimizer and sharded state; the task (`config.task.name`, behind the
contract `visgen.tasks.base.Task`) turns batches into a loss and draws
samples; the loop only steps, logs, checkpoints, writes the task's media and
runs `visgen.evaluations`. Sections follow big_vision's train.py.
"""

import json
import os
import time

from absl import logging
import jax
import numpy as np

from visgen import builder
from visgen import checkpoint as ckpt_lib
from visgen import evaluations
from visgen import logging_lib
from visgen import media as media_lib
from visgen import sharding
from visgen import stages as stages_lib
from visgen import validate
from visgen import warm_start
from visgen.data import pipeline


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------


def _previous_final_loss(workdir: str) -> float | None:
  """final_loss of the metrics.json a finished run left (None if none)."""
  try:
    with open(os.path.join(workdir, 'metrics.json')) as f:
      return json.load(f).get('final_loss')
  except (OSError, ValueError):
    return None


def train_and_evaluate(config, workdir: str, *,
                       start_time: float | None = None) -> dict:
  """Trains (resuming from `workdir` if it holds checkpoints), then evaluates.

  Returns the final metrics (also written to WORKDIR/metrics.json).
  """
  start_time = time.time() if start_time is None else start_time
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0

  # -- Stages: prerequisites (an autoencoder, a base model) trained first ------
  # into WORKDIR/stages/<name>; their time counts in this run's wall clock.
  stage_metrics = stages_lib.run(config, workdir, train_and_evaluate)
  stages_lib.resolve(config, workdir)

  # -- Set up the mesh ---------------------------------------------------------
  mesh = sharding.make_mesh(config.sharding.mesh)
  logging.info('Process %d/%d, %d devices, mesh %s', jax.process_index(),
               jax.process_count(), jax.device_count(), dict(mesh.shape))

  # -- Model, frozen parts, task, optimizer (abstract) -------------------------
  builder.check_inputs(config)
  b = builder.build(config, mesh)
  task = b.task

  # -- Checkpoints: refuse a foreign workdir before writing anything -----------
  ckpt = ckpt_lib.Checkpointer(
      workdir, every=config.ckpt_every, keep_last=config.keep_last,
      keep_every=config.keep_every,
      fp=ckpt_lib.fingerprint(config, b.abstract_params),
      start_time=start_time)  # Wall time accumulates across resumes.
  ckpt_lib.PREEMPTION.install()
  if is_main:
    logging_lib.write_text(os.path.join(workdir, 'config.json'),
                           config.to_json_best_effort(indent=2))
  writer = logging_lib.MetricWriter(workdir)

  # -- Input pipeline ----------------------------------------------------------
  source = builder.load_train_source(config)
  # Batch size, flips, threads and host-side hooks (config.data.tokenizer).
  data_iter = pipeline.make_iterator_from_config(source, config.data,
                                                 seed=config.seed)
  batch_axes = sharding.batch_axes(mesh, config.sharding.rules)
  local_spec = task.batch_spec(config.data.batch_size // jax.process_count())
  checked_labels = []
  # The config's class count (not the task's attribute: tasks without
  # classes need not have one).
  num_classes = int(config.task.get('num_classes', 0))

  def next_batch():
    # Only what the task consumes goes to the devices (scene datasets also
    # carry captions, masks, keypoints, ...).
    raw = next(data_iter)
    if not checked_labels:  # Out-of-range labels would only show as NaN.
      validate.check_first_batch(raw, num_classes=num_classes)
      checked_labels.append(True)
    local = pipeline.device_entries(raw, task.batch_keys)
    # A missing or misshapen entry is named here, not deep inside the step.
    pipeline.check_batch(local, local_spec, what='The training batch')
    return pipeline.make_global_array(local, mesh, batch_axes=batch_axes)

  # -- Create or restore the state, directly sharded ---------------------------
  rng = jax.random.key(config.seed)
  restored = ckpt.restore(b.abstract, data_iter)
  if restored is None:
    state = builder.create_state(b, jax.random.fold_in(rng, 1))
    state = warm_start.maybe_warm_start(state, config)  # config.init_from
    first_step = 0
  else:
    state, first_step = restored
  logging_lib.log_parameter_overview(state['params'])

  # -- Jitted functions --------------------------------------------------------
  train_step = builder.make_train_step(b)
  # Frozen parts (autoencoder, teacher, ...): the step's non-donated input.
  frozen = b.frozen.params
  step_rng = jax.random.fold_in(rng, 2)
  n_grid = int(config.get('num_grid_samples', 100))
  sample_grid = builder.make_sample_fn(b, n_grid)
  guidance = builder.guidance_scale(config)

  def write_grid(st, step, path=None):
    if not n_grid:  # Tests and benchmarks may skip sampling.
      return None
    cond = task.sample_cond(n_grid)
    x = sample_grid(builder.first_ema(st), frozen, cond,
                    jax.random.fold_in(rng, 3), guidance)
    m = task.to_media(x, cond)
    if m.kind == 'array':  # Vectors have no picture.
      return None
    return writer.write_image(step, 'samples', media_lib.grid(m), path=path)

  # -- Train loop --------------------------------------------------------------
  total = config.total_steps
  progress = logging_lib.Progress(first_step, total)
  pending = None  # (step, metrics) fetched one step late.
  last_metrics: dict[str, float] = {}

  def fetch(step, metrics):
    host = jax.device_get(metrics)
    if not np.isfinite(host['loss']):
      raise validate.DivergedError(validate.nonfinite_loss_message(
          host['loss'], step, num_classes=num_classes,
          latest_step=ckpt.latest_step(), directory=str(ckpt.directory)))
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
        writer.write_scalars(step, evaluations.run_evals(
            b, builder.first_ema(state), jax.random.fold_in(rng, 5)))
    if pending is not None:
      last_metrics = fetch(*pending)
      writer.write_scalars(pending[0], last_metrics)
  finally:
    ckpt.wait()

  # -- Final samples and evaluation --------------------------------------------
  train_time = ckpt.elapsed_s()  # Every segment of a resumed run.
  if 'loss' not in last_metrics:  # A finished workdir rerun: no new step.
    last_metrics = dict(loss=_previous_final_loss(workdir))
  results = {'steps': step, 'train_wall_time_s': train_time,
             'final_loss': last_metrics['loss']}
  if is_main:
    write_grid(state, step, path=os.path.join(workdir, 'samples.png'))
  results.update(evaluations.run_evals(b, builder.first_ema(state),
                                       jax.random.fold_in(rng, 4)))
  results['wall_time_s'] = ckpt.elapsed_s()
  for name, m in stage_metrics.items():
    results.setdefault('stages', {})[name] = {
        k: v for k, v in m.items() if isinstance(v, (int, float))}
  writer.write_scalars(step, {k: v for k, v in results.items()
                              if isinstance(v, (int, float))})
  if is_main:  # Atomic, strict JSON (null, never NaN).
    logging_lib.write_json(os.path.join(workdir, 'metrics.json'), results)
  logging.info('Done: %s', results)
  writer.close()
  ckpt.close()
  return results
