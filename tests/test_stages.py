"""Stages (visgen.stages): prerequisite runs trained first, named 'stage:'.

The end-to-end case is configs/shapes.py:runlocal, whose latent generator
trains its autoencoder as a stage: the stage lands in WORKDIR/stages/
autoencoder, the generator's frozen autoencoder is exactly that stage's EMA
weights, a second run does not train the stage again, and the config.json the
run saves names the stage's workdir (what --mode=sample/eval and
visgen.generate read).
"""

import json
import os
import shutil

import jax
import ml_collections as mlc
import numpy as np
import pytest

from visgen import config_lib
from visgen import config_loader
from visgen import main as main_lib
from visgen import stages
from visgen import train
from visgen import validate
from visgen import weights as weights_lib

ROOT = os.path.join(os.path.dirname(__file__), '..')


def _config(**kw):
  c = config_lib.base_config()
  c.stages = mlc.ConfigDict(kw.pop('stages', {}))
  c.frozen = mlc.ConfigDict(kw.pop('frozen', {}))
  return c


def test_resolve_rewrites_stage_sources_to_the_stage_workdir(tmp_path):
  c = _config(stages=dict(ae=dict(config='configs/autoencoder_shapes.py')),
              frozen=dict(autoencoder=dict(source='stage:ae'),
                          other=dict(source='npz:/x.npz')))
  c.init_from = mlc.ConfigDict(dict(source='stage:ae'))
  stages.resolve(c, str(tmp_path / 'run'))
  want = 'workdir:' + os.path.join(str(tmp_path), 'run', 'stages', 'ae')
  assert c.frozen.autoencoder.source == want
  assert c.init_from.source == want
  assert c.frozen.other.source == 'npz:/x.npz'


@pytest.mark.parametrize('stages_, frozen, match', [
    ({}, dict(a=dict(source='stage:ae')), r"frozen\.a\.source='stage:ae' "
     'names no training stage'),
    (dict(ae=dict(config='configs/autoencoder_shapes.py', steps=3)), {},
     r"config\.stages\.ae has unknown fields \['steps'\]"),
    (dict(ae=dict(config='configs/no_such.py')), {},
     r'config\.stages\.ae\.config: no config file'),
    (dict(ae=dict()), {}, r'config\.stages\.ae\.config must name'),
])
def test_bad_stages_fail_with_the_key(stages_, frozen, match):
  c = _config(stages=stages_, frozen=frozen)
  with pytest.raises(ValueError, match=match):
    stages.check(c)


def test_cli_names_a_stage_source_without_a_stage(tmp_path, capsys):
  code = main_lib.cli([
      'main', f'--config={ROOT}/configs/shapes.py:runlocal',
      '--config.frozen.autoencoder.source=stage:vae',
      f'--workdir={tmp_path}'])
  assert code == 2
  err = capsys.readouterr().err
  assert 'names no training stage' in err and 'Traceback' not in err


def test_latent_shapes_stages_train_once_then_pre_encode_once(
    tmp_path, monkeypatch):
  """One test (one xdist worker), so that the encoding-stage half reuses
  the autoencoder stage the first half trained (a copy of it, as a user's
  copied workdir would)."""
  sub = _autoencoder_stage_trains_once(tmp_path)
  _encoding_stage_pre_encodes_once(tmp_path, monkeypatch, sub)


def _autoencoder_stage_trains_once(tmp_path):
  wd = str(tmp_path / 'run')
  c = config_loader.load(f'{ROOT}/configs/shapes.py:runlocal')
  validate.check_config(c)
  c.num_grid_samples = 0
  out = train.train_and_evaluate(c, wd)
  sub = os.path.join(wd, 'stages', 'autoencoder')
  assert out['steps'] == c.total_steps
  with open(os.path.join(sub, 'metrics.json')) as f:
    ae_metrics = json.load(f)
  stage_steps = stages.load_stage_config(c.stages.autoencoder).total_steps
  assert ae_metrics['steps'] == stage_steps
  assert out['stages']['autoencoder']['steps'] == stage_steps
  # The saved config names the stage's workdir, and the generator's frozen
  # autoencoder is exactly that workdir's EMA weights.
  with open(os.path.join(wd, 'config.json')) as f:
    saved = json.load(f)
  assert saved['frozen']['autoencoder']['source'] == 'workdir:' + sub
  from visgen import builder  # pylint: disable=g-import-not-at-top
  b, _, _ = builder.restore(config_loader.load_workdir(wd), wd)
  ae_b, ae_state, _ = builder.restore(
      stages.load_stage_config(c.stages.autoencoder), sub)
  want = jax.tree.leaves(builder.first_ema(ae_state))
  got = jax.tree.leaves(b.frozen.params['autoencoder'])
  assert len(got) == len(want)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
  del ae_b
  # A second run (finished workdir) does not train the stage again.
  before = os.path.getmtime(os.path.join(sub, 'metrics.json'))
  c2 = config_loader.load(f'{ROOT}/configs/shapes.py:runlocal')
  c2.num_grid_samples = 0
  train.train_and_evaluate(c2, wd)
  assert os.path.getmtime(os.path.join(sub, 'metrics.json')) == before
  assert weights_lib.parse_source(saved['frozen']['autoencoder']['source'],
                                  what='x')[0] == 'workdir'
  # A copied workdir resumes (checkpoint fingerprints name the stage, not
  # its absolute path) and uses its own copy of the stage.
  moved = str(tmp_path / 'moved')
  shutil.copytree(wd, moved)
  c3 = config_loader.load(f'{ROOT}/configs/shapes.py:runlocal')
  c3.num_grid_samples = 0
  out3 = train.train_and_evaluate(c3, moved)
  assert out3['steps'] == c.total_steps
  assert c3.frozen.autoencoder.source == 'workdir:' + os.path.join(
      moved, 'stages', 'autoencoder')


  # A noise-aware classifier in the same latent space (classifier guidance
  # of the latent generator) trains on the stage's autoencoder.
  cc = config_loader.load(
      f'{ROOT}/configs/shapes_noisy_classifier.py:runlocal,ae={sub}')
  cc.total_steps = 2
  cc.num_grid_samples = 4
  cls_out = train.train_and_evaluate(cc, str(tmp_path / 'cls'))
  assert np.isfinite(cls_out['final_loss'])
  assert tuple(cc.task.x_shape) == tuple(c.task.x_shape)
  return sub


def test_fingerprint_names_stages_symbolically():
  assert stages.symbolic('workdir:/a/b/stages/autoencoder') == (
      'stage:autoencoder')
  assert stages.symbolic('workdir:/a/b/autoencoder') == (
      'workdir:/a/b/autoencoder')
  assert stages.symbolic('npz:/a/stages/x') == 'npz:/a/stages/x'


def _encoding_stage_pre_encodes_once(tmp_path, monkeypatch, ae_stage):
  """configs/shapes.py:runlocal,cache=N: the autoencoder stage (here a
  copy of `ae_stage`, already trained), then an
  encoding stage writes the encoder's posterior means of the first N train
  scenes; the generator trains on them through the codec's normalisation,
  which equals encoding the images in the step; a finished encoding is not
  redone and a failed one leaves nothing a later run would trust."""
  from visgen import builder  # pylint: disable=g-import-not-at-top
  from visgen.data import latents as latents_lib  # pylint: disable=g-import-not-at-top
  from visgen.data import shapes as shapes_data  # pylint: disable=g-import-not-at-top

  wd = str(tmp_path / 'encoded')
  ae_copy = os.path.join(wd, 'stages', 'autoencoder')
  shutil.copytree(ae_stage, ae_copy)
  ae_time = os.path.getmtime(os.path.join(ae_copy, 'metrics.json'))
  spec = f'{ROOT}/configs/shapes.py:runlocal,cache=32'
  c = config_loader.load(spec)
  validate.check_config(c)
  c.num_grid_samples = 0
  out = train.train_and_evaluate(c, wd)
  assert os.path.getmtime(os.path.join(ae_copy, 'metrics.json')) == ae_time
  assert out['steps'] == c.total_steps
  assert out['stages']['latents']['num_examples'] == 32
  sub = os.path.join(wd, 'stages', 'latents')
  assert c.data.path == sub and not os.path.exists(sub + '.partial')
  with open(os.path.join(sub, 'meta.json')) as f:
    meta = json.load(f)
  assert meta['autoencoder'] == 'stage:autoencoder'
  # The stored latents are the stage autoencoder's posterior means, and the
  # task's view of them equals encoding the images inside the step.
  b, _, _ = builder.restore(config_loader.load_workdir(wd), wd)
  src = shapes_data.ShapesSource(split='train', resolution=8)
  images = np.stack([src[i]['image'] for i in range(8)])
  stored = latents_lib.LatentSource(sub)
  raw = np.stack([stored[i]['latent'] for i in range(8)])
  assert [stored[i]['label'] for i in range(8)] == [
      src[i]['label'] for i in range(8)]
  frozen = b.frozen.params
  want = np.asarray(b.task.codec.encode(frozen, images))
  got = np.asarray(b.task.to_x0({'latent': raw}))
  np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)
  # Not encoded again by a second run.
  before = os.path.getmtime(os.path.join(sub, 'latents.npy'))
  c2 = config_loader.load(spec)
  c2.num_grid_samples = 0
  train.train_and_evaluate(c2, wd)
  assert os.path.getmtime(os.path.join(sub, 'latents.npy')) == before
  # A request for more scenes re-encodes; one that dies mid-way leaves the
  # previous complete latents or none, never a half-written directory.

  def boom(*a, **k):
    raise RuntimeError('killed mid-encoding')

  monkeypatch.setattr(latents_lib, 'encode_dataset', boom)
  c3 = config_loader.load(f'{ROOT}/configs/shapes.py:runlocal,cache=48')
  with pytest.raises(RuntimeError, match='killed'):
    stages.run_encode('latents', c3.stages.latents, wd)
  assert os.path.getmtime(os.path.join(sub, 'latents.npy')) == before
  with open(os.path.join(sub, 'meta.json')) as f:
    assert json.load(f)['num_examples'] == 32
  # Asking for captions too (text-to-image) is a different encoding: the
  # stage says it must run again rather than reuse label-only latents.
  want = stages._encode_meta(dict(c.stages.latents, fields=('label', 'caption')),  # pylint: disable=protected-access
                             os.path.join(wd, 'stages', 'autoencoder'))
  assert not stages._encoded(sub, want)  # pylint: disable=protected-access
  same = stages._encode_meta(dict(c.stages.latents),  # pylint: disable=protected-access
                             os.path.join(wd, 'stages', 'autoencoder'))
  assert stages._encoded(sub, same)  # pylint: disable=protected-access


@pytest.mark.parametrize('stages_, path, match', [
    ({}, 'stage:latents', r"data\.path='stage:latents' names no encoding"),
    (dict(latents=dict(encode='stage:ae')), 'stage:latents',
     r"stages\.latents\.encode='stage:ae' names no training stage"),
    (dict(latents=dict(encode='/x', dataset='shapes')), 'stage:latents',
     r"must name the autoencoder"),
    (dict(latents=dict(encode='workdir:/x', splits='train')), 'x',
     r"unknown fields \['splits'\]"),
])
def test_bad_encoding_stages_fail_with_the_key(stages_, path, match):
  c = _config(stages=stages_)
  c.data = mlc.ConfigDict(dict(name='latents', path=path))
  with pytest.raises(ValueError, match=match):
    stages.check(c)
