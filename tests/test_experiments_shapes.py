"""The scene-world generator's evaluator keys and its wall-clock curve."""

import json

import jax
import numpy as np
from PIL import Image

from experiments import shapes_curve
from visgen.data import digits
from visgen.evaluators import feature_nets
from visgen.evaluators import in_loop


def test_in_loop_reports_real_and_sample_class_accuracy():
  test = digits.load_digits_split('test', size=16)
  ev = in_loop.InLoopEvaluator(feature_net='digits', reference=dict(test),
                               num_samples=120, batch_size=60)
  real = feature_nets.class_accuracy(test['image'], test['label'])
  assert ev.real_accuracy == real

  def sample_fn(key, n, shift=0):
    i = int(jax.random.randint(key, (), 0, 100))
    return (test['image'][i:i + n], (test['label'][i:i + n] + shift) % 10)

  m = ev.run(sample_fn, jax.random.key(0))
  assert m['class_accuracy_real'] == m['digits_class_accuracy_real'] == real
  imgs, labels = zip(*(sample_fn(jax.random.fold_in(jax.random.key(0), i),
                                 60) for i in range(2)))
  want = feature_nets.class_accuracy(np.concatenate(imgs),
                                     np.concatenate(labels))
  assert m['class_accuracy'] == m['digits_class_accuracy'] == want
  # Wrong labels: the samples' accuracy drops, the real one does not move.
  bad = ev.run(lambda k, n: sample_fn(k, n, shift=1), jax.random.key(0))
  assert bad['class_accuracy'] < 0.2 and bad['class_accuracy_real'] == real
  # Unlabelled reference: no real accuracy is claimed.
  ev2 = in_loop.InLoopEvaluator(feature_net='digits',
                                reference=dict(image=test['image']),
                                num_samples=60, batch_size=60)
  m2 = ev2.run(sample_fn, jax.random.key(0))
  assert 'class_accuracy_real' not in m2 and 'class_accuracy' in m2


def test_curve_steps_and_plot(tmp_path):
  class C(dict):
    __getattr__ = dict.get

  assert shapes_curve._eval_steps(C(eval_every=500, total_steps=1000)) == [
      500, 1000, 1000]
  assert shapes_curve._eval_steps(C(eval_every=400, total_steps=1000)) == [
      400, 800, 1000]
  assert shapes_curve._eval_steps(C(eval_every=0, total_steps=7)) == [7]
  curves = {'a': [dict(train_s=60, shapes_fid=200.0),
                  dict(train_s=600, shapes_fid=20.0)],
            'b': [dict(train_s=90, shapes_fid=120.0)]}
  path = tmp_path / 'curve.png'
  shapes_curve.plot(curves, str(path), floor=3.5)
  img = np.asarray(Image.open(path).convert('RGB'))
  assert img.shape == (840, 1020, 3)  # figsize (8.5, 7.0) at 120 dpi
  # Both curves' colours are drawn, a third is not.
  for col in shapes_curve.COLOURS[:2]:
    assert np.any(np.all(img == col, axis=-1))
  if len(shapes_curve.COLOURS) > 2:
    assert not np.any(np.all(img == shapes_curve.COLOURS[2], axis=-1))
  json.dumps(curves)  # what curve.json holds
