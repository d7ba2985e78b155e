"""Metrics between a reference and a sample set on one feature network.

`MetricInputs` gathers, batch by batch, what the metrics need: pool features
(kept: precision/recall and KID need them), streaming statistics of pool and
spatial features (spatial features are not kept: 50k x 2023 floats would
be 400 MB), and logits (for the Inception Score). `metrics_between` then
returns the dict with keys fid, sfid, inception_score, precision, recall,
kid; a metric the network cannot define (sFID without spatial features, IS
without logits) is None. Display names come from `display_names`: on
Inception they are ADM's ('FID', 'sFID', 'Inception Score'); on a trained
net they carry its name ('digits-FID', ...), never 'FID'.
"""

import dataclasses

import numpy as np

from visgen.evaluators import batch_io
from visgen.evaluators import frechet
from visgen.evaluators import manifold
from visgen.evaluators import scores

METRIC_KEYS = ('inception_score', 'fid', 'sfid', 'precision', 'recall', 'kid')
_ADM_NAMES = {'inception_score': 'Inception Score', 'fid': 'FID',
              'sfid': 'sFID', 'precision': 'Precision', 'recall': 'Recall',
              'kid': 'KID'}


def display_names(net) -> dict[str, str]:
  if net.metric_prefix == '':
    return dict(_ADM_NAMES)
  short = {'inception_score': 'IS', 'fid': 'FID', 'sfid': 'sFID',
           'precision': 'Precision', 'recall': 'Recall', 'kid': 'KID'}
  return {k: f'{net.metric_prefix}{v}' for k, v in short.items()}


@dataclasses.dataclass
class MetricInputs:
  """Features and statistics of one image set, accumulated batch by batch."""

  pool: list = dataclasses.field(default_factory=list)
  logits: list = dataclasses.field(default_factory=list)
  pool_stats: frechet.FeatureStats = dataclasses.field(
      default_factory=frechet.FeatureStats)
  spatial_stats: frechet.FeatureStats | None = None
  # Precomputed statistics (ADM reference batches) override the streamed ones.
  given_stats: frechet.GaussianStats | None = None
  given_spatial_stats: frechet.GaussianStats | None = None

  def add(self, feats: dict) -> None:
    self.pool.append(np.asarray(feats['pool'], np.float32))
    self.pool_stats.update(feats['pool'])
    if feats.get('spatial') is not None:
      if self.spatial_stats is None:
        self.spatial_stats = frechet.FeatureStats()
      self.spatial_stats.update(feats['spatial'])
    if feats.get('logits') is not None:
      self.logits.append(np.asarray(feats['logits']))

  @property
  def pool_features(self) -> np.ndarray:
    return np.concatenate(self.pool)

  def stats(self) -> frechet.GaussianStats:
    return self.given_stats or self.pool_stats.stats()

  def spatial(self) -> frechet.GaussianStats | None:
    if self.given_spatial_stats is not None:
      return self.given_spatial_stats
    return None if self.spatial_stats is None else self.spatial_stats.stats()


def gather(net, images, *, batch_size: int = 500) -> MetricInputs:
  """Runs `net` over uint8 NHWC images (array or StreamingImages)."""
  inputs = MetricInputs()
  for batch in batch_io.iter_batches(images, batch_size):
    inputs.add(net(batch))
  return inputs


def metrics_between(ref: MetricInputs, sample: MetricInputs, *,
                    kid_subsets: int = 100, kid_subset_size: int = 1000
                    ) -> dict:
  """ADM's metrics (+ KID) of `sample` against `ref`."""
  out = dict.fromkeys(METRIC_KEYS)
  if sample.logits:
    out['inception_score'] = scores.inception_score(
        logits=np.concatenate(sample.logits))
  out['fid'] = frechet.frechet_distance_stats(sample.stats(), ref.stats())
  ref_sp, sam_sp = ref.spatial(), sample.spatial()
  if ref_sp is not None and sam_sp is not None:
    out['sfid'] = frechet.frechet_distance_stats(sam_sp, ref_sp)
  ref_pool, sam_pool = ref.pool_features, sample.pool_features
  out['precision'], out['recall'] = manifold.precision_recall(
      ref_features=ref_pool, sample_features=sam_pool)
  out['kid'] = scores.kernel_inception_distance(
      features1=ref_pool, features2=sam_pool, num_subsets=kid_subsets,
      subset_size=kid_subset_size)
  return out


def compare(net, *, ref_images, sample_images) -> dict:
  """All metrics of two uint8 image sets on `net`."""
  return metrics_between(gather(net, ref_images), gather(net, sample_images))
