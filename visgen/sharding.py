"""Meshes and shardings from the config.

The config names the mesh axes and their sizes (`sharding.mesh`, e.g.
`[('data', -1), ('fsdp', 1)]`, -1 takes the remaining devices) and maps the
models' logical axis names to mesh axes (`sharding.rules`). Data parallel,
FSDP and hybrid are therefore config changes only. Parameters without logical
names (e.g. converted pretrained weights) fall back to big_vision's FSDP rule:
shard the largest dimension divisible by the axis size, if the array is big
enough to be worth it.
"""

import math
from typing import Any
from typing import Sequence

from flax import nnx
import jax
from jax.sharding import AxisType
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from visgen import models
from visgen import param_tree


def make_mesh(mesh_spec: Sequence[tuple[str, int]],
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh with Auto axis types (jax.make_mesh defaults to Explicit)."""
  devices = list(devices if devices is not None else jax.devices())
  names = tuple(name for name, _ in mesh_spec)
  sizes = [int(size) for _, size in mesh_spec]
  if sizes.count(-1) > 1:
    raise ValueError(f'At most one mesh axis may be -1, got {mesh_spec}.')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f'{len(devices)} devices cannot fill mesh {mesh_spec}.')
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(
        f'Mesh {mesh_spec} has {math.prod(sizes)} devices but {len(devices)} '
        'are available; use -1 for one axis to absorb the rest.')
  return jax.make_mesh(tuple(sizes), names, devices=devices,
                       axis_types=(AxisType.Auto,) * len(names))


def batch_axes(mesh: Mesh, rules: Sequence[Sequence[Any]]) -> tuple[str, ...]:
  """The mesh axes the batch dimension is split over (rule 'batch')."""
  axes = dict((r[0], r[1]) for r in rules).get('batch', mesh.axis_names)
  axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
  return tuple(a for a in axes if a in mesh.axis_names)


def data_sharding(mesh: Mesh, rules) -> NamedSharding:
  axes = batch_axes(mesh, rules)
  return NamedSharding(mesh, P(axes if axes else None))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Replicates the dimensions whose size the mesh axes do not divide."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * len(shape)):
    flat = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = math.prod(mesh.shape[a] for a in flat)
    out.append(axes if flat and dim % size == 0 else None)
  return P(*out)


def fsdp_spec(shape: tuple[int, ...], itemsize: int, mesh: Mesh, axis: str,
              min_size_mb: float) -> P:
  """big_vision's FSDP fallback: shard the largest divisible dimension."""
  n = mesh.shape.get(axis, 1)
  if n == 1 or math.prod(shape) * itemsize < min_size_mb * 2**20:
    return P()
  for d in np.argsort(shape)[::-1]:
    if shape[d] % n == 0:
      return P(*[axis if i == d else None for i in range(len(shape))])
  return P()


def param_shardings(abstract_params: nnx.State, mesh: Mesh, cfg) -> Any:
  """NamedShardings for the parameters from logical names and the rules.

  Returns the same structure as `abstract_params` (an nnx.State whose
  variables hold NamedShardings).
  """
  rules = [tuple(r) for r in cfg.rules]
  axes_tree = models.logical_axes(abstract_params)
  fallback = cfg.get('fsdp_fallback_axis')
  min_mb = cfg.get('min_size_to_shard_mb', 4.0)

  def one(names, var):
    shape, dtype = var.shape, var.dtype
    if names is None and fallback:
      spec = fsdp_spec(shape, np.dtype(dtype).itemsize, mesh, fallback, min_mb)
    else:
      spec = _fit(models.logical_to_spec(names, rules), shape, mesh)
    return var.replace(NamedSharding(mesh, spec))

  return jax.tree.map(one, axes_tree, abstract_params,
                      is_leaf=lambda x: x is None or isinstance(x, tuple))


def tree_shardings(abstract_tree: Any, params_tree: Any,
                   param_sharding: Any, mesh: Mesh) -> Any:
  """Shardings for a tree holding params-shaped subtrees (optimizer state).

  Every leaf whose '/'-joined path ends with a parameter's path and that has
  the parameter's shape (the params, Adam's mu and nu, EMA copies, also when
  a trainable mask (`optim.trainable`) leaves out some of them) gets that
  parameter's sharding; everything else (counters) is replicated.
  """
  shapes = {p: tuple(x.shape) for p, x in param_tree.flatten(
      params_tree).items()}
  shards = param_tree.flatten(param_sharding)

  def one(path, x):
    parts = path.split('/')
    for i in range(len(parts)):  # The longest matching suffix wins.
      suffix = '/'.join(parts[i:])
      if suffix in shards and shapes[suffix] == tuple(x.shape):
        return shards[suffix]
    return replicated(mesh)

  return param_tree.map_with_path(one, abstract_tree)
