r"""Builds an ADM reference batch from a dataset split.

  python -m visgen.evaluators.make_reference --dataset=digits --split=test \
      --feature-net=digits --out=REF.npz [--size=16] [--num-examples=N]

Writes `arr_0` (uint8 NHWC images), `label` when the split has labels, and
the statistics `mu, sigma` (pool features) and `mu_s, sigma_s` (spatial
features, Inception only) of the whole written split on `--feature_net`,
with `feature_net` naming the network (`visgen.evaluate` uses the statistics
only with that network). `--feature-net=none` writes images only.
"""

import argparse

import numpy as np

from visgen.evaluators import batch_io
from visgen.evaluators import compare
from visgen.evaluators import datasets
from visgen.evaluators import feature_nets


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


def main(argv=None):
  parser = argparse.ArgumentParser(
      prog='python -m visgen.evaluators.make_reference')
  parser.add_argument('--dataset', default='digits')
  parser.add_argument('--split', default='test')
  parser.add_argument('--size', type=int, default=None,
                      help='image side (dataset default)')
  parser.add_argument('--num-examples', '--num_examples', type=int,
                      default=None, help='first N examples only')
  parser.add_argument('--feature-net', '--feature_net', default=None,
                      help='net for the statistics (default: the dataset '
                      'net for digits/shapes, else inception); none = skip')
  parser.add_argument('--out', required=True, help='output .npz')
  args = parser.parse_args(argv)
  written = make_reference(args.out, dataset=args.dataset, split=args.split,
                           size=args.size, num_examples=args.num_examples,
                           feature_net=args.feature_net)
  print(f'Wrote {args.out}: arr_0 and {sorted(written)}.')


if __name__ == '__main__':
  main()
