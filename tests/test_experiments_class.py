"""The class-conditional experiments end to end on tiny (runlocal) configs.

Both share one workdir, as documented: the diffusion-classifier experiment
reuses the guidance experiment's generator and both keep their keys in
results.json.
"""

import json
import os
import types

import numpy as np
from PIL import Image
import pytest

from experiments import diffusion_classifier
from experiments import guidance_tradeoff
from visgen.classification import guided_sampling
from visgen.data import shapes


def test_guidance_table_then_diffusion_classifier_share_a_workdir(tmp_path):
  d = str(tmp_path)
  res = guidance_tradeoff.run(
      d, gen_steps=4, cls_steps=4, num_samples=20, cfg_scales=['0', '3'],
      cls_scales=['2'], batch=20, runlocal=True, grids=False)
  rows = res['rows']
  assert [(r['guidance'], r['scale']) for r in rows] == [
      ('none', 1.0), ('classifier', 2.0), ('cfg', 0.0), ('cfg', 3.0)]
  for r in rows:
    for k in ('fid', 'precision', 'recall', 'class_accuracy'):
      assert np.isfinite(r[k]), (r, k)
    assert 0.0 <= r['precision'] <= 1.0 and 0.0 <= r['recall'] <= 1.0
    assert r['sfid'] is None  # the digits net has no spatial features
  assert rows[2]['base'] == 'unconditional'
  # Different guidance, different samples (same keys per row index aside).
  assert len({round(r['fid'], 6) for r in rows}) == len(rows)
  assert res['floor']['fid'] >= 0.0
  assert res['dataset'] == 'digits'
  # The evaluator's accuracy on the real test digits: the samples' ceiling.
  assert 0.9 <= res['floor']['class_accuracy'] <= 1.0
  assert res['generator']['step'] == 4 and res['classifier']['step'] == 4
  # The curve it measures, as a picture: four panels against the scale.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  img = Image.open(os.path.join(d, 'tradeoff.png'))
  assert img.size[0] > 3 * img.size[1]

  # The class-grid command on the same runs (deliverable: a sampling
  # command at a chosen guidance). The runlocal configs are the ones used.
  png = os.path.join(d, 'grid.png')
  root = guidance_tradeoff.ROOT
  guided_sampling.main([
      f'--generator_config={root}/configs/quickstart.py:runlocal',
      f'--generator={d}/generator',
      f'--classifier_config={root}/configs/digits_noisy_classifier.py'
      ':runlocal',
      f'--classifier={d}/classifier', '--guidance=classifier',
      '--scale=2', '--per_class=2', f'--out={png}'])
  with Image.open(png) as im:  # 10 class rows of 8x8 digits, upscaled 4x
    assert im.size == ((2 * 9 - 1) * 4, (10 * 9 - 1) * 4)  # 1 px gaps

  gen_metrics = os.path.join(d, 'generator', 'metrics.json')
  stamp = os.path.getmtime(gen_metrics)
  out = diffusion_classifier.run(d, gen_steps=4, disc_steps=4, num_draws=4,
                                 gmm_n=200, num_test=16, runlocal=True,
                                 gmm_draws=64,
                                 gmm_paths=(('linear', 'velocity'),))
  # The generator was reused, not retrained.
  assert out['digits']['generator_step'] == 4
  assert os.path.getmtime(gen_metrics) == stamp
  dg = out['digits']
  for k in ('diffusion_classifier_accuracy', 'discriminative_accuracy'):
    assert 0.0 <= dg[k] <= 1.0
  g = out['gmm']
  assert g['bayes_accuracy'] < 0.95  # overlapping classes: informative
  # Exact denoisers: the diffusion classifier is Bayes-optimal up to noise.
  assert abs(g['accuracy'] - g['bayes_accuracy']) < 4 * g['standard_error']
  with open(os.path.join(d, 'results.json')) as f:
    saved = json.load(f)
  assert {'rows', 'digits', 'gmm'} <= set(saved)


def test_shapes_dataset_pairs_generator_classifier_and_scorer():
  """The scene-world table: its configs agree with each other and the net."""
  spec = guidance_tradeoff.DATASETS.get('shapes')
  assert spec.feature_net == 'shapes' and spec.reference == 'shapes:test'
  for runlocal in (False, True):
    gen = guidance_tradeoff.generator_config(5, runlocal=runlocal,
                                             dataset='shapes')
    # The generator is latent (its autoencoder a stage of its run): the
    # classifier reads x_t in the same autoencoder's latent space.
    gen.frozen.autoencoder.source = 'workdir:/runs/g/stages/autoencoder'
    ae = guidance_tradeoff.latent_autoencoder(gen)
    assert ae == '/runs/g/stages/autoencoder'
    cls = guidance_tradeoff.classifier_config(5, runlocal=runlocal,
                                              dataset='shapes', ae=ae)
    assert gen.total_steps == cls.total_steps == 5 and not dict(gen.eval)
    # The generator reads the scenes pre-encoded by its encoding stage, the
    # classifier the scenes themselves, at the size the latents decode to.
    assert gen.data.name == 'latents' and gen.data.path == 'stage:latents'
    assert gen.stages.latents.dataset == cls.data.name == 'shapes'
    assert gen.task.data_key == 'latent'
    res = cls.data.resolution
    assert tuple(gen.task.latent.image_shape) == (res, res, 3)
    # A noise-aware classifier must see x_t of the generator's own path.
    assert gen.path.to_dict() == cls.path.to_dict()
    assert tuple(gen.task.x_shape) == tuple(cls.task.x_shape)
    assert gen.task.latent.to_dict() == cls.task.latent.to_dict()
    assert cls.frozen.autoencoder.source == 'workdir:' + ae
    pixel = guidance_tradeoff.classifier_config(5, runlocal=runlocal,
                                                dataset='shapes')
    assert tuple(pixel.task.x_shape) == (res, res, 3)
    assert gen.task.num_classes == cls.task.num_classes == len(shapes.SHAPES)
    assert gen.task.label_dropout > 0.0  # the null class, for CFG
  # The reference images are compared at the size the samples decode to
  # (a latent generator's x_shape is its latents').
  latent_task = types.SimpleNamespace(
      x_shape=(8, 8, 4), codec=types.SimpleNamespace(image_shape=(32, 32, 3)))
  pixel_task = types.SimpleNamespace(x_shape=(16, 16, 3), codec=None)
  assert guidance_tradeoff.image_size(latent_task) == 32
  assert guidance_tradeoff.image_size(pixel_task) == 16
  with pytest.raises(ValueError, match='Valid choices: digits, shapes'):
    guidance_tradeoff.DATASETS.get('cifar10')
  table = guidance_tradeoff.markdown(
      [dict(guidance='cfg', scale=2.0, fid=1.5, precision=0.5, recall=0.25,
            class_accuracy=0.75)],
      dict(fid=0.5, precision=0.875, recall=0.9375, class_accuracy=0.625),
      net='shapes')
  assert table.splitlines()[0].startswith(
      '| guidance | scale | shapes-FID | sFID | shapes-Precision |')
  assert table.splitlines()[2] == (
      '| cfg | 2 | 1.50 | n/a | 0.500 | 0.250 | 0.750 |')
  assert table.splitlines()[3].endswith('| 0.875 | 0.938 | 0.625 |')
