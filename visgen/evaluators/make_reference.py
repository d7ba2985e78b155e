r"""Builds an ADM reference batch from a dataset split.

  python -m visgen.evaluators.make_reference --dataset=digits --split=test \
      --feature_net=digits --out=REF.npz [--size=16] [--num_examples=N]

Writes `arr_0` (uint8 NHWC images), `label` when the split has labels, and
the statistics `mu, sigma` (pool features) and `mu_s, sigma_s` (spatial
features, Inception only) of the whole written split on `--feature_net`,
with `feature_net` naming the network (`visgen.evaluate` uses the statistics
only with that network). `--feature_net=none` writes images only.
"""

from absl import app
from absl import flags
import numpy as np

from visgen.evaluators import batch_io
from visgen.evaluators import compare
from visgen.evaluators import datasets
from visgen.evaluators import feature_nets

_DATASET = flags.DEFINE_string('dataset', 'digits', 'Registered dataset.')
_SPLIT = flags.DEFINE_string('split', 'test', 'Split to write.')
_SIZE = flags.DEFINE_integer('size', None, 'Image side (dataset default).')
_NUM = flags.DEFINE_integer('num_examples', None, 'First N examples only.')
_NET = flags.DEFINE_string('feature_net', None,
                           'Net for statistics (default: dataset net for '
                           'digits/shapes, inception otherwise); none = skip.')
_OUT = flags.DEFINE_string('out', None, 'Output .npz.', required=True)


def make_reference(path: str, *, dataset: str, split: str,
                   size: int | None = None, num_examples: int | None = None,
                   feature_net: str | None = None) -> dict:
  """Writes the reference batch; returns what was written (minus images)."""
  data = datasets.load_images(dataset, split=split, size=size,
                              num_examples=num_examples)
  if feature_net is None:
    feature_net = dataset if dataset in ('digits', 'shapes') else 'inception'
  extra = dict(label=data.get('label'))
  if feature_net != 'none':
    net = feature_nets.get_feature_net(feature_net)
    inputs = compare.gather(net, data['image'])
    stats, spatial = inputs.stats(), inputs.spatial()
    extra.update(mu=stats.mu, sigma=stats.sigma,
                 feature_net=np.array(feature_net))
    if spatial is not None:
      extra.update(mu_s=spatial.mu, sigma_s=spatial.sigma)
  batch_io.write_batch(path, data['image'], **extra)
  return {k: v for k, v in extra.items() if v is not None}


def main(argv):
  del argv
  written = make_reference(_OUT.value, dataset=_DATASET.value,
                           split=_SPLIT.value, size=_SIZE.value,
                           num_examples=_NUM.value, feature_net=_NET.value)
  print(f'Wrote {_OUT.value}: arr_0 and {sorted(written)}.')


if __name__ == '__main__':
  app.run(main)
