"""The one builder: config -> mesh, model, frozen parts, task, optimizer and
the abstract sharded train state.

Training (`visgen.train`), sample and eval modes (`visgen.sample`), the
benchmark (`visgen.bench`), guided sampling and the experiments all start
here, so they build exactly the same thing:

  b = builder.build(config)                  # nothing allocated but frozen
  state = builder.create_state(b, rng)       # directly sharded
  step = builder.make_train_step(b)          # jit(state, frozen, batch, rng)
  sample = builder.make_sample_fn(b, n)      # jit(params, frozen, cond, ...)
  b, state, step = builder.restore(config, workdir)

Nothing here imports the loop. The state layout is `visgen.state`'s; the
frozen components are `visgen.frozen`'s (passed to the task as apply
functions and to the step as the non-donated `frozen` argument).
"""

import dataclasses
import os
from typing import Any
from typing import Callable

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from visgen import checkpoint as ckpt_lib
from visgen import frozen as frozen_lib
from visgen import models
from visgen import optim
from visgen import sharding
from visgen import stages as stages_lib
from visgen import state as state_lib
from visgen import tasks
from visgen import train_step as step_lib
from visgen.data import pipeline

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@dataclasses.dataclass
class Built:
  """Everything a run needs, before any parameter is allocated.

  Attributes:
    config: the run's ConfigDict.
    mesh: the device mesh (`config.sharding.mesh`).
    graphdef: the trainable model's graph.
    apply: apply(params, x_t, t, cond, *, rngs=None, train=False).
    abstract_params: the trainable parameters' shapes and logical axes.
    frozen: the frozen components (`visgen.frozen.Frozen`: .params, .apply).
    task: the task (`visgen.tasks.base.Task`), apply functions bound.
    tx, schedule: the optimizer and its learning-rate schedule.
    init: rng -> train state (unjitted).
    shardings: the train state's NamedShardings.
    abstract: the train state's ShapeDtypeStructs, with shardings (the
      target of sharded restores).
  """

  config: Any
  mesh: jax.sharding.Mesh
  graphdef: nnx.GraphDef
  apply: Callable[..., Any]
  abstract_params: Any
  frozen: frozen_lib.Frozen
  task: tasks.Task
  tx: Any
  schedule: Callable[[Any], Any]
  init: Callable[[jax.Array], dict]
  shardings: Any
  abstract: Any


def model_kwargs(config) -> tuple[str, dict]:
  """(model name, constructor kwargs) of `config.model` (dtype resolved)."""
  kw = dict(config.model)
  name = kw.pop('name')
  if isinstance(kw.get('dtype'), str):
    if kw['dtype'] not in DTYPES:
      raise ValueError(f'Unknown model dtype {kw["dtype"]!r}. Valid choices: '
                       f'{", ".join(DTYPES)}.')
    kw['dtype'] = DTYPES[kw['dtype']]
  return name, kw


def build(config, mesh: jax.sharding.Mesh | None = None) -> Built:
  """Model, frozen parts, task, optimizer and the abstract sharded state."""
  mesh = mesh if mesh is not None else sharding.make_mesh(
      config.sharding.mesh)
  name, kw = model_kwargs(config)
  # The abstract model gives the graph and the logical axes without
  # allocating anything; the real parameters are created inside `init`.
  abstract_model = nnx.eval_shape(
      lambda: models.get_model(name, rngs=nnx.Rngs(0), **kw))
  graphdef, abstract_params = models.split_model(abstract_model)

  def param_init(rng):
    return models.split_model(
        models.get_model(name, rngs=nnx.Rngs(rng), **kw))[1]

  frozen = frozen_lib.build_frozen(config, mesh)
  apply = models.make_apply(graphdef)
  task = tasks.get_task(config, apply=apply, frozen_apply=frozen.apply)
  tx, schedule = optim.make_optimizer(config.optim, config.total_steps)
  init = state_lib.make_init(param_init, tx, config.ema_decays,
                             task_init=task.init_state)
  abstract = jax.eval_shape(init, jax.random.key(0))
  p_shard = sharding.param_shardings(abstract_params, mesh, config.sharding)
  shardings = sharding.tree_shardings(abstract, abstract['params'], p_shard,
                                      mesh)
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract, shardings)
  return Built(config=config, mesh=mesh, graphdef=graphdef, apply=apply,
               abstract_params=abstract_params, frozen=frozen, task=task,
               tx=tx, schedule=schedule, init=init, shardings=shardings,
               abstract=abstract)


def create_state(b: Built, rng: jax.Array) -> dict:
  """A fresh train state, created directly sharded."""
  # Warm starts (config.init_from, visgen.warm_start) replace parameters
  # of this fresh state; resumed runs restore instead (see visgen.train).
  return jax.jit(b.init, out_shardings=b.shardings)(rng)


def make_train_step(b: Built):
  """jit(state, frozen, batch, rng) -> (state, metrics); state donated."""
  step_fn = step_lib.make_train_step(
      b.task.loss, b.tx, b.schedule,
      accum_steps=b.config.optim.get('accum_steps', 1),
      ema_warmup=b.config.get('ema_warmup', False))
  return jax.jit(step_fn, donate_argnums=(0,),
                 out_shardings=(b.shardings, sharding.replicated(b.mesh)))


def make_sample_fn(b: Built, n: int):
  """jit(params, frozen, cond, key, guidance) -> n samples (replicated)."""
  task = b.task

  def sample(params, frozen, cond, key, guidance):
    return task.sample(params, frozen, cond, key, n=n, guidance=guidance)

  return jax.jit(sample, out_shardings=sharding.replicated(b.mesh))


def guidance_scale(config) -> jax.Array:
  """The sampling guidance of the config (CFG scale; 1 = none)."""
  return jnp.float32(config.sampler.get('cfg_scale', 1.0))


def first_ema(state) -> Any:
  """The EMA params of the first decay (or the raw params without EMA)."""
  return next(iter(state['ema'].values())) if state['ema'] else (
      state['params'])


def checkpointer(b: Built, workdir: str, **kw) -> ckpt_lib.Checkpointer:
  """The run's checkpointer, fingerprinted by config and parameters."""
  return ckpt_lib.Checkpointer(
      workdir, fp=ckpt_lib.fingerprint(b.config, b.abstract_params), **kw)


def restore(config, workdir: str, mesh=None, *,
            built: Built | None = None) -> tuple[Built, dict, int]:
  """(built parts, train state, step) of the latest checkpoint of workdir
  (`built`: the parts already built from this config, not built again)."""
  stages_lib.resolve(config, workdir)  # 'stage:' sources -> sub-workdirs
  b = built or build(config, mesh)
  ckpt = checkpointer(b, workdir, every=1, keep_last=1, read_only=True)
  restored = ckpt.restore(b.abstract)
  ckpt.close()
  if restored is None:
    raise FileNotFoundError(
        f'No checkpoint in {ckpt.directory}: train first with --mode=train '
        'and the same --workdir.')
  state, step = restored
  return b, state, step


# ----------------------------------------------------------------------------
# Data sources.
# ----------------------------------------------------------------------------


def get_source(cfg, split: str):
  """The data engineer's source registry (`visgen.data.get_source`)."""
  from visgen import data  # pylint: disable=g-import-not-at-top

  # Pipeline entries (batch_size, flip, tokenizer, ...) are not the source's.
  return data.get_source(cfg['name'], split=split,
                         **pipeline.source_kwargs(cfg))


def check_inputs(config) -> None:
  """The weight files of config.frozen exist; when one does not, one
  FileNotFoundError names every missing input (the dataset's availability
  too, e.g. ImageNet for a latent DiT), each with its hint
  (`config.frozen.<name>.hint`), so one message says all there is to
  prepare."""
  from visgen import weights as weights_lib  # pylint: disable=g-import-not-at-top
  problems = []
  for name, entry in (config.get('frozen') or {}).items():
    source = (entry or {}).get('source')
    if not isinstance(source, str) or source.startswith('stage:'):
      continue
    try:
      kind, path = weights_lib.parse_source(source, what=name)
    except ValueError:
      continue  # build() reports a malformed source
    missing = (not os.path.isdir(path) if kind == 'workdir' else
               not os.path.isfile(path))
    if missing:
      problems.append(f'config.frozen.{name}: {path} not found'
                      + (f' ({entry["hint"]})' if entry.get('hint') else ''))
  if not problems:
    return
  try:
    get_source(config.data, 'train')
  except Exception as e:  # pylint: disable=broad-except
    problems.append(f'dataset {config.data.name!r} unavailable: {e}')
  raise FileNotFoundError(
      'This config reads inputs that are not there; prepare them first. '
      'Missing:\n  - ' + '\n  - '.join(problems))


def load_train_source(config):
  """The training source of config.data."""
  return get_source(config.data, 'train')


def heldout_batches(b: Built, split: str, *, batch: int, num: int):
  """Fixed-size host batches of the entries the task reads, from the first
  `num // batch * batch` examples of `split` (evaluations)."""
  source = get_source(b.config.data, split)
  total = min(num, len(source)) // batch * batch
  if total == 0:
    raise ValueError(f'The evaluation needs at least batch={batch} '
                     f'examples; the {split!r} split has {len(source)}.')
  keys = b.task.batch_keys
  hooks = pipeline.example_transforms(b.config.data)  # e.g. the tokenizer

  def example(i):
    out = source[i]
    for hook in hooks:
      out = hook(out)
    return out

  for s in range(0, total, batch):
    examples = [example(i) for i in range(s, s + batch)]
    missing = [k for k in keys if k not in examples[0]]
    if missing:
      raise KeyError(f'The {split!r} split of {b.config.data.name!r} has no '
                     f'{missing} (the task reads {list(keys)}).')
    yield {k: np.stack([np.asarray(e[k]) for e in examples]) for k in keys}
