"""Orbax checkpoints: periodic and preemption saves, retention, resume.

One `CheckpointManager` under `WORKDIR/checkpoints` with three items per
step: 'state' (the sharded train state), 'data' (the grain iterator position,
one file per process) and 'meta' (a fingerprint of the model and config).

* Saves happen every `every` steps, and on SIGTERM (preemption): the loop
  asks `reached_preemption(step)`, saves, waits, and exits 0.
* Retention: the latest `keep_last` checkpoints plus every `keep_every`-th
  step (Orbax preservation policies).
* Orbax writes each step into a temporary directory and renames it on
  commit, so a crash mid-save leaves the previous step as the latest one.
* A workdir whose checkpoints carry a different fingerprint (another model or
  config) is refused with a message listing the differences; nothing is
  written into it.
* A save that cannot be made (disk full, read-only, permission) stops the
  run: `CheckpointSaveError` names the step, the cause and the last good
  checkpoint. Orbax writes in a background thread, so its errors are
  polled every step (`reached_preemption`) and after each save.
* The meta item also carries the run's accumulated wall time, so
  `elapsed_s()` covers every segment of a resumed run.
"""

import errno
import json
import os
import re
import signal
import threading
import time
from typing import Any

from absl import logging
from etils import epath
from flax import nnx
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from visgen import stages
from visgen import validate
from visgen.data import pipeline

# Config entries that may change between a run and its resumption: run
# length, logging/eval cadence, sampling settings and the device topology;
# `init_from` too: only a fresh run is warm-started, a resumption restores
# its own checkpoint whatever init_from now says.
RESUMABLE_KEYS = ('total_steps', 'log_every', 'ckpt_every', 'keep_last',
                  'keep_every', 'sample_every', 'eval_every', 'eval',
                  'sampler', 'sharding', 'num_samples', 'sample_batch',
                  'num_grid_samples', 'init_from')


def _flatten(d: Any, prefix: str = '') -> dict[str, Any]:
  if isinstance(d, dict):
    out = {}
    for k, v in d.items():
      out.update(_flatten(v, f'{prefix}{k}.'))
    return out
  return {prefix[:-1]: d}


def fingerprint(config, abstract_params) -> dict:
  """What must match to resume: parameter shapes/dtypes and the config."""
  params = {
      '/'.join(str(k) for k in path): [list(v.shape), str(v.dtype)]
      for path, v in nnx.to_flat_state(abstract_params)
  } if isinstance(abstract_params, nnx.State) else {
      jax.tree_util.keystr(p): [list(v.shape), str(v.dtype)]
      for p, v in jax.tree_util.tree_leaves_with_path(abstract_params)}
  cfg = _flatten(json.loads(config.to_json_best_effort()))
  # A stage's weights are part of the run (WORKDIR/stages/<name>): named
  # relative to it, so a copied or moved workdir still resumes.
  for k, v in cfg.items():
    if k.endswith('.source') and isinstance(v, str):
      cfg[k] = stages.symbolic(v)
    elif k == 'data.path' and isinstance(v, str):  # an encoding stage's
      sym = stages.symbolic('workdir:' + v)
      cfg[k] = sym if sym.startswith(stages.PREFIX) else v
  return {'params': params, 'config': _fixed(cfg)}


def _fixed(flat_cfg: dict) -> dict:
  return {k: v for k, v in flat_cfg.items()
          if k.split('.')[0] not in RESUMABLE_KEYS}


def _differences(old: dict, new: dict, limit: int = 8) -> list[str]:
  out = []
  for section in ('config', 'params'):  # The config says why.
    a, b = old.get(section, {}), new.get(section, {})
    if section == 'config':  # Stored by an older visgen: filter again.
      a, b = _fixed(a), _fixed(b)
    for k in sorted(set(a) | set(b)):
      if a.get(k) != b.get(k):
        out.append(f'{section} {k}: checkpoint={a.get(k, "<absent>")!r}, '
                   f'now={b.get(k, "<absent>")!r}')
  return out[:limit] + ([f'... and {len(out) - limit} more'] if len(out) >
                        limit else [])


class _PreemptionFlag:
  """Set by SIGTERM; the loop polls it (single-process runs)."""

  def __init__(self):
    self.event = threading.Event()

  def install(self):
    self.event.clear()  # A new run starts unpreempted.
    if threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, lambda *_: self.event.set())


PREEMPTION = _PreemptionFlag()


class CheckpointSaveError(validate.RunError):
  """A checkpoint could not be written; the run must stop."""


def _root_cause(e: BaseException) -> BaseException:
  """The first OSError in the cause/context chain (else e itself)."""
  first, seen = e, set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError):
      return e
    e = e.__cause__ or e.__context__
  return first


class Checkpointer:
  """The one checkpoint manager of a run."""

  def __init__(self, workdir: str, *, every: int, keep_last: int,
               keep_every: int = 0, fp: dict | None = None,
               async_save: bool = True, read_only: bool = False,
               start_time: float | None = None):
    # Orbax needs an absolute path; library callers (experiments) may pass
    # a relative one or ~.
    self.directory = epath.Path(
        os.path.abspath(os.path.expanduser(str(workdir)))) / 'checkpoints'
    # Wall time: this segment's start and what earlier segments used.
    self.start_time = time.time() if start_time is None else start_time
    self.prior_wall_time_s = 0.0
    self._saving_step = None
    keep = [cm.preservation_policy.LatestN(max(keep_last, 1))]
    if keep_every:
      keep.append(cm.preservation_policy.EveryNSteps(keep_every))
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=cm.FixedIntervalPolicy(max(every, 1)),
        preservation_policy=cm.AnyPreservationPolicy(keep),
        enable_async_checkpointing=async_save,
        # The step directory is made in save() itself: a folder that cannot
        # be created fails there, at once, instead of leaving Orbax's
        # background threads waiting for it (20 minutes at exit).
        async_options=ocp.AsyncOptions(
            create_directories_asynchronously=False),
        read_only=read_only, create=not read_only)
    self.fp = fp
    self.mngr = ocp.CheckpointManager(self.directory, options=options)
    self._check_fingerprint()

  def latest_step(self) -> int | None:
    return self.mngr.latest_step()

  def _check_fingerprint(self):
    step = self.latest_step()
    if step is None or self.fp is None:
      return
    old = self.mngr.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta']
    diffs = _differences(old, self.fp)
    if diffs:
      raise validate.UserError(
          f'The checkpoints in {self.directory} (latest step {step}) belong '
          'to a different model or config, so this run refuses to resume '
          'from or overwrite them. Use a fresh --workdir, or restore the '
          'original config. Differences:\n  ' + '\n  '.join(diffs))

  def save(self, step: int, state: Any, data_iter=None, *,
           force: bool = False) -> bool:
    meta = dict(self.fp or {}, wall_time_s=self.elapsed_s())
    items = dict(state=ocp.args.StandardSave(state),
                 meta=ocp.args.JsonSave(meta))
    if data_iter is not None:
      items['data'] = pipeline.checkpoint_args(data_iter)
    self.wait()  # A failed background save names its own step.
    self._saving_step = step
    try:
      saved = self.mngr.save(step, args=ocp.args.Composite(**items),
                             force=force)
      self.mngr.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(e, step) from e
    if saved:
      logging.info('Checkpoint of step %d -> %s', step, self.directory)
    return saved

  def committed_steps(self) -> list[int]:
    """Steps whose directory was committed (read from the disk)."""
    try:
      return sorted(int(p.name) for p in self.directory.iterdir()
                    if p.name.isdigit() and p.is_dir())
    except OSError:
      return []

  def _save_error(self, e: BaseException, step):
    """The message for a failed save: what, why, what is kept."""
    if isinstance(e, CheckpointSaveError):
      return e
    good = [s for s in self.committed_steps() if step is None or s < step]
    last_good = good[-1] if good else None
    cause = _root_cause(e)
    why = (validate.describe_os_error(cause) if isinstance(cause, OSError)
           else f'{type(cause).__name__}: {cause}')
    if not isinstance(cause, OSError) and (
        'No space left' in why or "os_error_code='28'" in why):
      # Tensorstore's error (a ValueError naming every temporary file) as
      # the OSError it wraps; the whole text is in the --verbose traceback.
      where = re.search(r'local file "([^"]+)"', why)
      why = validate.describe_os_error(OSError(
          errno.ENOSPC, 'No space left on device',
          where.group(1) if where else None))
    kept = (f'the last good checkpoint is step {last_good}, kept in '
            f'{self.directory}' if last_good is not None else
            'no earlier checkpoint exists')
    return CheckpointSaveError(
        f'Could not save the checkpoint of step {step} to {self.directory}: '
        f'{why}. The run stopped; {kept}. Fix the cause (free disk space, '
        'a writable --workdir), then rerun the same command to resume.')

  def check(self):
    """Raises `CheckpointSaveError` if a background save failed."""
    try:
      self.mngr.check_for_errors()
      # A failed background commit surfaces in the finalize thread, which
      # wait_until_finished re-raises (at once when no save is running).
      if not self.mngr.is_saving_in_progress():
        self.mngr.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(e, self._saving_step) from e

  def elapsed_s(self) -> float:
    """Wall time of the whole run: earlier segments plus this one."""
    return self.prior_wall_time_s + (time.time() - self.start_time)

  def restore(self, abstract_state: Any, data_iter=None,
              step: int | None = None) -> tuple[Any, int] | None:
    """Restores (state, step) directly sharded; None without checkpoints.

    `data_iter`, when given, is moved to the saved position.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    items = dict(state=ocp.args.StandardRestore(abstract_state),
                 meta=ocp.args.JsonRestore())
    if data_iter is not None:
      items['data'] = pipeline.checkpoint_args(data_iter, restore=True)
    out = self.mngr.restore(step, args=ocp.args.Composite(**items))
    meta = out.get('meta') or {}
    self.prior_wall_time_s = float(meta.get('wall_time_s', 0.0))
    logging.info('Restored step %d from %s', step, self.directory)
    return out['state'], step

  def reached_preemption(self, step: int) -> bool:
    """True once SIGTERM arrived (all processes agree in multi-host runs).

    Also raises `CheckpointSaveError` as soon as a background save failed:
    the loop asks every step, so no step runs past a lost save.
    """
    self.check()
    if jax.process_count() > 1:
      return self.mngr.reached_preemption(step)
    return PREEMPTION.event.is_set()

  def wait(self):
    try:
      self.mngr.wait_until_finished()
      self.mngr.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(e, self._saving_step) from e

  def close(self):
    self.wait()
    self.mngr.close()
