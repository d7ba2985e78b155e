"""Run logging without TensorFlow: stdout progress, JSONL, TensorBoard, PNGs.

`MetricWriter` writes every scalar record to `WORKDIR/metrics.jsonl` (one
JSON object per line, with 'step') and to TensorBoard event files through
tensorboardX; image grids go to `WORKDIR/samples/<name>_<step>.png` and to
TensorBoard. Only process 0 writes. `Progress` formats the progress line
(step, loss, steps/s, ETA).

Output files are written atomically (`atomic_output`: a temporary file in
the same folder, renamed over the target once complete), so a crash or a
full disk never leaves a half-written metrics.json, config.json or PNG; JSON
is strict (`json_safe`: NaN and infinities become null).
"""

import atexit
import contextlib
import json
import math
import os
import tempfile
import time
from typing import Any

from absl import logging
import jax
import numpy as np
from PIL import Image


def image_grid(images_NxHxWxC: np.ndarray, rows: int, *,
               pad: int = 1) -> np.ndarray:
  """Tiles uint8 images row-major into a grid with `pad` grey pixels between
  tiles: (rows*(H+pad)-pad, cols*(W+pad)-pad, C)."""
  n, h, w, c = images_NxHxWxC.shape
  cols = math.ceil(n / rows)
  x = np.concatenate([images_NxHxWxC, np.zeros((rows * cols - n, h, w, c),
                                               images_NxHxWxC.dtype)])
  x = np.pad(x, ((0, 0), (0, pad), (0, pad), (0, 0)), constant_values=128)
  x = x.reshape(rows, cols, h + pad, w + pad, c).transpose(0, 2, 1, 3, 4)
  x = x.reshape(rows * (h + pad), cols * (w + pad), c)
  return x[:x.shape[0] - pad, :x.shape[1] - pad]


@contextlib.contextmanager
def atomic_output(path: str):
  """Yields a temporary path beside `path`; renames it onto `path` when the
  block completes (removes it when the block fails)."""
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path),
                             suffix='.tmp')
  os.close(fd)
  try:
    yield tmp
    # mkstemp makes 0600 files; outputs get the usual umask permissions.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def json_safe(obj: Any) -> Any:
  """obj with NaN / infinite floats as None and numpy scalars as Python's
  (strict JSON: json.dump of the result never writes NaN)."""
  if isinstance(obj, dict):
    return {str(k): json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [json_safe(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return json_safe(obj.tolist())
  if isinstance(obj, np.generic):
    obj = obj.item()
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  return obj


def write_json(path: str, obj: Any, *, indent: int | None = 2,
               **kwargs) -> None:
  """Strict JSON (null for NaN), written atomically."""
  text = json.dumps(json_safe(obj), indent=indent, allow_nan=False, **kwargs)
  write_text(path, text + '\n')


def write_text(path: str, text: str) -> None:
  with atomic_output(path) as tmp:
    with open(tmp, 'w') as f:
      f.write(text)


def save_png(path: str, grid_HxWxC: np.ndarray, upscale: int = 1):
  img = grid_HxWxC[..., 0] if grid_HxWxC.shape[-1] == 1 else grid_HxWxC
  pil = Image.fromarray(np.asarray(img, np.uint8))
  if upscale > 1:
    pil = pil.resize((pil.width * upscale, pil.height * upscale),
                     Image.Resampling.NEAREST)
  with atomic_output(path) as tmp:
    pil.save(tmp, format='PNG')


class MetricWriter:
  """JSONL + TensorBoard writer; a no-op on processes other than 0."""

  def __init__(self, workdir: str, *, tensorboard: bool = True):
    self.workdir = workdir
    self.active = jax.process_index() == 0
    self._tb = None
    self._jsonl = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
    if tensorboard:
      # Lazy: only process 0 needs it. pylint: disable=g-import-not-at-top
      import tensorboardX

      self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, 'tb'))
      # Runs before tensorboardX's own exit hook (atexit is last-in,
      # first-out): a run that stopped on a full disk must not end with
      # its flush tracebacks after the run's error line.
      atexit.register(self._close_at_exit)

  def write_scalars(self, step: int, scalars: dict[str, Any]):
    if not self.active:
      return
    record = {'step': int(step)}
    record.update({k: float(v) for k, v in scalars.items()})
    self._jsonl.write(json.dumps(json_safe(record), allow_nan=False) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, float(v), int(step))

  def write_image(self, step: int, name: str, grid_HxWxC: np.ndarray,
                  path: str | None = None, upscale: int = 4) -> str | None:
    """Saves a uint8 grid as PNG (default WORKDIR/samples/name_step.png)."""
    if not self.active:
      return None
    if path is None:
      os.makedirs(os.path.join(self.workdir, 'samples'), exist_ok=True)
      path = os.path.join(self.workdir, 'samples', f'{name}_{step:07d}.png')
    save_png(path, grid_HxWxC, upscale)
    if self._tb is not None:
      self._tb.add_image(name, np.asarray(grid_HxWxC), int(step),
                         dataformats='HWC')
    return path

  def flush(self):
    if self._tb is not None:
      self._tb.flush()

  def close(self):
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      tb, self._tb = self._tb, None
      tb.close()

  def _close_at_exit(self):
    """Closes TensorBoard's files at exit if the run did not (it stopped on
    an error); an unwritable disk loses the last events, silently."""
    if self._tb is None:
      return
    tb, self._tb = self._tb, None
    for w in list((tb.all_writers or {}).values()):
      ev = w.event_writer
      try:
        ev.close()
      except OSError:
        # Stop the worker thread and mark the file closed, so that
        # tensorboardX's exit hook has nothing left to flush.
        with contextlib.suppress(Exception):
          ev._worker.stop()  # pylint: disable=protected-access
        ev._closed = True  # pylint: disable=protected-access


def _fmt_time(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


class Progress:
  """Tracks steps/s over the last logging interval and formats the line."""

  def __init__(self, first_step: int, total_steps: int):
    self.total = total_steps
    self._last_step, self._last_time = first_step, time.perf_counter()

  def line(self, step: int, metrics: dict[str, float]) -> tuple[str, float]:
    now = time.perf_counter()
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    eta = (self.total - step) / rate if rate > 0 else float('inf')
    return (f'step {step}/{self.total}  loss {metrics.get("loss", 0):.5f}  '
            f'{rate:.2f} steps/s  ETA {_fmt_time(eta)}'), rate


class _DropLibraryInfo:
  """Filters INFO records of chatty libraries (Orbax logs every save step).

  Orbax's errors are dropped too: every one of them is a failed save or
  restore that the checkpointer turns into the run's one error line (what
  failed, why, what is kept, what to do). With `verbose` they are kept,
  tracebacks included.
  """

  def __init__(self, verbose: bool = False):
    self.verbose = verbose

  def filter(self, record) -> bool:
    if 'asyncio' in record.pathname:
      # Orbax's failed background writes resurface at exit as "exception
      # was never retrieved" with a traceback each: already reported.
      return self.verbose or 'orbax-checkpoint-tmp' not in record.getMessage()
    if 'orbax' not in record.pathname:
      return True
    if record.levelno >= 40:
      return self.verbose
    return record.levelno > 20


def quiet_library_logs(verbose: bool = False):
  """Installs the filter on absl's handler (once; `verbose` updates it)."""
  handler = logging.get_absl_handler()
  for f in handler.filters:
    if isinstance(f, _DropLibraryInfo):
      f.verbose = verbose
      return
  handler.addFilter(_DropLibraryInfo(verbose))


def log_parameter_overview(params) -> int:
  """Logs a table of parameter shapes and sizes; returns the count."""
  from clu import parameter_overview  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  tree = nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params
  table = parameter_overview.get_parameter_overview(tree, include_stats=False)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  logging.info('Parameters (%s):\n%s', f'{count:,}', table)
  return count
