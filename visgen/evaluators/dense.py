"""Metrics of dense prediction on the scene world (numpy, host side).

  semantic_miou(pred, gt)            mean IoU over the classes
  edge_f1(pred, gt)                  per-image F1 at 1 px tolerance
  depth_order_accuracy(pred, gt)     pairwise z-order agreement

All take (N, H, W) maps. `edge_f1` is also the edge-adherence score of the
control experiments (experiments/control_editing.py applies it to the
edges it detects in generated scenes).
"""

import numpy as np


def _check(pred, gt, what):
  pred, gt = np.asarray(pred), np.asarray(gt)
  if pred.shape != gt.shape or pred.ndim != 3:
    raise ValueError(f'{what}: prediction {pred.shape} and ground truth '
                     f'{gt.shape} must both be (N, H, W) maps of the same '
                     'shape.')
  return pred, gt


def semantic_miou(pred, gt, num_classes: int = 5) -> float:
  """Mean over classes of IoU = TP / (TP + FP + FN), the counts summed
  over every pixel of every image (the dataset-level confusion matrix,
  as in PASCAL VOC / Cityscapes); a class absent from both the prediction
  and the ground truth is left out of the mean."""
  pred, gt = _check(pred, gt, 'semantic_miou')
  ious = []
  for c in range(num_classes):
    p, g = pred == c, gt == c
    union = np.sum(p | g)
    if union:
      ious.append(np.sum(p & g) / union)
  return float(np.mean(ious))


def dilate(m: np.ndarray) -> np.ndarray:
  """(N, H, W) bool dilated by one pixel (4-neighbourhood)."""
  out = m.copy()
  out[:, 1:] |= m[:, :-1]
  out[:, :-1] |= m[:, 1:]
  out[:, :, 1:] |= m[:, :, :-1]
  out[:, :, :-1] |= m[:, :, 1:]
  return out


def edge_f1(pred, gt) -> float:
  """Mean over images of the F1 of predicted vs true edge pixels with 1 px
  tolerance: precision = predicted edge pixels within 1 px (4-neighbour)
  of a true one / predicted ones, recall = true edge pixels within 1 px of
  a predicted one / true ones (0 / 0 counts as 0)."""
  pred, gt = _check(pred, gt, 'edge_f1')
  pred, gt = pred.astype(bool), gt.astype(bool)
  tp_p = (pred & dilate(gt)).sum((1, 2))
  tp_r = (gt & dilate(pred)).sum((1, 2))
  prec = tp_p / np.maximum(pred.sum((1, 2)), 1)
  rec = tp_r / np.maximum(gt.sum((1, 2)), 1)
  return float(np.mean(2 * prec * rec / np.maximum(prec + rec, 1e-9)))


def depth_order_pairs(pred, gt, *, objects_only: bool = False):
  """Per-image depth-order scores (list of floats; images without a
  scorable pair are skipped). See `depth_order_accuracy`."""
  pred, gt = _check(pred, gt, 'depth_order_accuracy')
  scores = []
  for p, g in zip(pred.astype(np.float64), gt):
    regions = [r for r in np.unique(g) if r > 0 or not objects_only]
    pair_scores = []
    for i, a in enumerate(regions):
      pa = np.sort(p[g == a])
      for b in regions[i + 1:]:                     # a < b: b is nearer
        pb = p[g == b]
        # For each pixel of b, the number of pixels of a strictly farther.
        below = np.searchsorted(pa, pb, side='left')
        pair_scores.append(below.sum() / (pa.size * pb.size))
    if pair_scores:
      scores.append(float(np.mean(pair_scores)))
  return scores


def depth_order_accuracy(pred, gt, *, objects_only: bool = False) -> float:
  """Depth-order accuracy of a predicted depth map against the true
  z-order ranks.

  `gt` (N, H, W) int: the rank of the object covering each pixel (0 the
  background, 1 the bottom object .. n the top one; higher = nearer).
  `pred` (N, H, W) float: any predicted nearness (higher = nearer).

  In each image, for every unordered pair of distinct true regions (a, b)
  with a < b (with `objects_only`, background pairs are left out), the
  pair's score is the fraction of pixel pairs (i in region a, j in region
  b) the prediction orders correctly, pred[j] > pred[i] strictly (a tie is
  wrong). An image's score is the mean over its region pairs (each pair
  weighs the same whatever its area, so the big background does not
  dominate); the accuracy is the mean over images that have a pair.
  The ground truth scores 1; a constant prediction scores 0; reversing
  the order of the n objects of an image while keeping the background
  farthest scores n / (n + n (n - 1) / 2) (its n background pairs right,
  its object pairs wrong).
  """
  scores = depth_order_pairs(pred, gt, objects_only=objects_only)
  return float(np.mean(scores)) if scores else float('nan')
