"""Every config builds (full and runlocal) and its runlocal variant trains.

The runlocal runs share one process; each is a tiny model on mock data for
one step plus a 2-step sample grid, so the whole file stays within CI budget.
Full configs are only built: their datasets are absent on CI machines, and
the error must say what to prepare.
"""

import glob
import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from visgen import builder
from visgen import frozen as frozen_lib
from visgen import sharding
from visgen import stages
from visgen import train

CONFIGS = sorted(glob.glob(os.path.join(
    os.path.dirname(__file__), '..', 'configs', '*.py')))
NAMES = [os.path.basename(p)[:-3] for p in CONFIGS]
# These runlocal variants are trained end to end through `visgen.main` by
# the test file named (which checks more than one step does), so the
# one-step check below leaves them out.
TRAINED_ELSEWHERE = {
    'quickstart': 'test_generate.py', 't2i_shapes': 'test_generate.py',
    'shapes': 'test_stages.py', 'world_shapes': 'test_world.py',
    'video_autoencoder': 'test_video_autoencoder.py',
    'dense_shapes': 'test_dense.py',
}
# Configs kept under an old name that are exactly another config (same
# `:args`): checked equal to it below rather than trained a second time.
ALIASES = {'shapes_cfg': 'shapes'}


def load(name):
  path = CONFIGS[NAMES.index(name)]
  spec = importlib.util.spec_from_file_location(f'configs.{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_expected_configs_exist():
  for name in ('quickstart', 'dit_imagenet', 'adm_unet', 'ncsn_cifar10',
               'scoresde_cifar10', 'flow_matching_cifar10', 'sit_cifar10',
               'edm_cifar10'):
    assert name in NAMES


@pytest.mark.parametrize('name', NAMES)
def test_full_config_builds(name):
  c = load(name).get_config('')
  assert c.total_steps > 0 and c.model.name and c.data.batch_size > 0
  assert load(name).__doc__ and 'python -m visgen.main' in load(name).__doc__
  if c.get('stages'):
    # Frozen parts that a stage trains first (visgen.stages) do not exist
    # yet: each stage's config builds, and the model exists abstractly.
    for spec in c.stages.values():
      if 'encode' in spec:  # an encoding stage: data, not a model
        continue
      sc = stages.load_stage_config(spec)
      builder.build(sc, sharding.make_mesh(sc.sharding.mesh))
    _, abstract = frozen_lib.abstract_model('model', c.model.to_dict())
    assert sum(x.size for x in jax.tree.leaves(abstract)) > 0
    return
  try:
    builder.check_inputs(c)
  except FileNotFoundError:
    # Published weights not downloaded here (dit_imagenet's SD-VAE): the
    # model and the declared frozen model exist abstractly.
    for entry in c.frozen.values():
      model = frozen_lib.declared_model(dict(entry))
      assert model, 'a frozen part without a declared model config'
      frozen_lib.abstract_model('frozen', model)
    _, abstract = frozen_lib.abstract_model('model', c.model.to_dict())
    assert sum(x.size for x in jax.tree.leaves(abstract)) > 0
    return
  # The full-size model, task and optimizer state exist abstractly (shapes
  # only, nothing allocated): catches bad model arguments in big configs.
  b = builder.build(c, sharding.make_mesh(c.sharding.mesh))
  assert b.task.x_shape == tuple(c.task.x_shape)
  n = sum(x.size for x in jax.tree.leaves(b.abstract_params))
  assert n > 0


@pytest.mark.parametrize(
    'name', [n for n in NAMES if n not in TRAINED_ELSEWHERE
             and n not in ALIASES])
def test_runlocal_trains_one_step(name, tmp_path):
  c = load(name).get_config('runlocal')
  c.total_steps = 1
  # Sampling is exercised by test_main and the quickstart; skipping it here
  # halves the compile cost of this file.
  c.num_grid_samples = 0
  out = train.train_and_evaluate(c, str(tmp_path))
  assert out['steps'] == 1 and np.isfinite(out['final_loss'])
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['model']['name'] == c.model.name
  assert (tmp_path / 'checkpoints' / '1').exists()


def test_aliases_are_exactly_their_config():
  for alias, name in ALIASES.items():
    for arg in ('', 'runlocal', 'runlocal,arch=dit', 'cfg_scale=3'):
      a, b = load(alias).get_config(arg), load(name).get_config(arg)
      assert a.to_json_best_effort(sort_keys=True) == (
          b.to_json_best_effort(sort_keys=True)), (alias, arg)
    assert load(name).get_config('cfg_scale=3').to_json_best_effort() != (
        load(name).get_config('').to_json_best_effort())


def test_configs_trained_elsewhere_are_trained_there():
  for name, test_file in TRAINED_ELSEWHERE.items():
    assert name in NAMES, name
    with open(os.path.join(os.path.dirname(__file__), test_file)) as f:
      assert f'configs/{name}.py' in f.read(), (name, test_file)


def test_dit_imagenet_names_both_missing_inputs(tmp_path):
  c = load('dit_imagenet').get_config(f'vae={tmp_path}/no_vae')
  with pytest.raises(FileNotFoundError) as e:
    builder.check_inputs(c)
  msg = str(e.value)
  assert 'imagenet256' in msg and 'no_vae/model.safetensors' in msg
  assert 'python -m visgen.convert --from=diffusers' in msg
  # The same message from the training entry point, before any build.
  with pytest.raises(FileNotFoundError, match='no_vae'):
    train.train_and_evaluate(c, str(tmp_path / 'w'))


def test_cifar_config_without_data_says_how_to_prepare():
  c = load('flow_matching_cifar10').get_config('')
  with pytest.raises(Exception, match='(?i)cifar10'):
    builder.load_train_source(c)


def test_dit_xl2_has_the_paper_size():
  c = load('dit_imagenet').get_config('variant=XL/2')
  _, abstract = frozen_lib.abstract_model('model', c.model.to_dict())
  n = sum(x.size for x in jax.tree.leaves(abstract))
  assert 670e6 < n < 680e6, n  # DiT-XL/2: 675M parameters.


def test_scoresde_variants():
  mod = load('scoresde_cifar10')
  assert mod.get_config('sde=ve').path.name == 've'
  assert mod.get_config('vp').path.name == 'vp'
  with pytest.raises(ValueError, match='Valid choices: vp, ve'):
    mod.get_config('sde=subvp')
