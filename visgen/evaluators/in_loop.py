"""Evaluation inside the training loop: sample M images, score, log; no disk.

Usage (training loop, every N steps, with EMA parameters inside sample_fn):

  evaluator = InLoopEvaluator(feature_net='digits', reference='digits:test',
                              num_samples=512, image_size=16)
  metrics = evaluator.run(sample_fn, jax.random.key(step))

`sample_fn(key, n)` returns n uint8 NHWC images (numpy or jax), or a tuple
(images, labels) for class-conditional sampling (labels = the classes asked
for; then `class_accuracy` is reported). It is called with batches of at most
`batch_size`, each with `jax.random.fold_in(key, i)`.

`run` returns floats keyed `<net>_<metric>` for trained nets (digits_fid,
digits_precision, digits_recall, digits_kid, digits_is,
digits_class_accuracy, and the real-against-real floors digits_fid_floor,
digits_precision_floor, digits_recall_floor, digits_kid_floor) and plain
`fid`, `sfid`, `inception_score`, `precision`, `recall`, `kid` for Inception;
undefined metrics are left out. For class-conditional samples scored by a
trained net whose reference split carries labels, it also reports
`<net>_class_accuracy_real`, the net's accuracy on the real reference
images (the ceiling of the samples' accuracy), and both accuracies under the
plain names `class_accuracy` and `class_accuracy_real`.
"""

import jax
import numpy as np

from visgen.evaluators import compare
from visgen.evaluators import datasets
from visgen.evaluators import feature_nets


def _key_name(net, metric: str) -> str:
  if net.metric_prefix == '':
    return metric
  short = 'is' if metric == 'inception_score' else metric
  return f'{net.name}_{short}'


class InLoopEvaluator:
  """Reference features computed once; `run` scores a fresh sample set."""

  def __init__(self, *, feature_net: str = 'digits',
               reference: str | dict = 'digits:test', num_samples: int = 512,
               image_size: int | None = None, batch_size: int = 128,
               kid_subsets: int = 100):
    """Builds the evaluator.

    Args:
      feature_net: 'digits', 'shapes' or 'inception'.
      reference: 'dataset:split' (loaded at `image_size`) or a dict with
        'image' (uint8 NHWC).
      num_samples: M, images drawn per `run`.
      image_size: resolution of the reference split and of the floor.
      batch_size: largest n passed to `sample_fn`.
      kid_subsets: subsets averaged by KID (subset size min(1000, M, N)).
    """
    self.net = feature_nets.get_feature_net(feature_net)
    if isinstance(reference, str):
      if ':' not in reference:
        raise ValueError(
            f'reference must be "dataset:split" (e.g. "digits:test"), got '
            f'{reference!r}.')
      dataset, split = reference.split(':', 1)
      reference = datasets.load_images(dataset, split=split, size=image_size)
    images = np.asarray(reference['image'])
    self.ref = compare.gather(self.net, images)
    # The classifier's accuracy on the real reference images (its logits
    # come with the reference features), when the split has labels.
    self.real_accuracy = None
    if reference.get('label') is not None and self.ref.logits:
      pred = np.argmax(np.concatenate(self.ref.logits), -1)
      self.real_accuracy = float(np.mean(pred == np.asarray(
          reference['label'])))
    self.image_size = images.shape[1]
    self.num_samples = num_samples
    self.batch_size = batch_size
    self.kid_subsets = kid_subsets

  def run(self, sample_fn, rng) -> dict[str, float]:
    """Draws `num_samples` images from `sample_fn` and returns the metrics."""
    sample = compare.MetricInputs()
    correct, labelled = 0, 0
    done, i = 0, 0
    while done < self.num_samples:
      n = min(self.batch_size, self.num_samples - done)
      out = sample_fn(jax.random.fold_in(rng, i), n)
      images, labels = out if isinstance(out, tuple) else (out, None)
      images = np.asarray(images)
      if images.dtype != np.uint8 or images.shape[0] != n:
        raise ValueError(
            f'sample_fn(key, {n}) must return {n} uint8 NHWC images, got '
            f'{images.dtype} {images.shape}.')
      feats = self.net(images)
      sample.add(feats)
      if labels is not None and feats.get('logits') is not None:
        pred = np.argmax(feats['logits'], -1)
        correct += int(np.sum(pred == np.asarray(labels)))
        labelled += n
      done, i = done + n, i + 1
    metrics = compare.metrics_between(self.ref, sample,
                                      kid_subsets=self.kid_subsets)
    result = {_key_name(self.net, k): float(v) for k, v in metrics.items()
              if v is not None}
    if labelled:
      result[_key_name(self.net, 'class_accuracy')] = correct / labelled
      if self.net.metric_prefix:  # a trained net: its classes are the data's
        result['class_accuracy'] = correct / labelled
        if self.real_accuracy is not None:
          result[_key_name(self.net, 'class_accuracy_real')] = (
              self.real_accuracy)
          result['class_accuracy_real'] = self.real_accuracy
    floor = self.net.floor(self.image_size)
    for k, v in (floor or {}).items():
      if k in compare.METRIC_KEYS and v is not None:
        result[_key_name(self.net, k) + '_floor'] = float(v)
    return result
