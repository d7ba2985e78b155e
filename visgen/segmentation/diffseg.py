"""DiffSeg: unsupervised segmentation from a diffusion model's self-attention.

Tian et al. 2023, "Diffuse, Attend, and Segment". Three steps, all numpy:

1. `aggregate`: self-attention maps of several resolutions (each (r*r, r*r):
   for every query location a distribution over key locations, heads
   averaged) become one (R*R, R*R) tensor at the largest resolution R. The
   key axes of each map are upsampled bilinearly to R x R, the query axes
   by repetition (nearest), the maps are summed with weights proportional
   to their resolution (the paper's choice), and every query's map is
   renormalised to sum to one.
2. `merge`: anchors on an M x M grid of query locations; each anchor's
   attention map is a proposal; for `iterations` rounds, proposals whose
   symmetric KL distance D(a, b) = (KL(a||b) + KL(b||a)) / 2 is below
   `threshold` are grouped (greedily, in order: each unassigned proposal
   takes every unassigned one within the threshold, so no duplicates
   remain) and averaged.
3. `assign` (the paper's non-maximum suppression): every key location
   takes the index of the proposal with the largest probability there;
   labels are then upsampled (nearest) to the image and renumbered 0..K-1.

`segment(maps, ...)` runs all three. `miou` scores a label map against
instance ground truth with Hungarian matching (each ground-truth segment,
background included, matched to at most one predicted segment; unmatched
ground truth scores 0), and `kmeans_segment` is the pixel-colour baseline.
"""

from typing import Sequence

import numpy as np
from scipy import optimize
from scipy.cluster import vq


def _bilinear_matrix(src: int, dst: int) -> np.ndarray:
  """(dst, src) linear interpolation weights (half-pixel centres, edges
  clamped), the 1-D factor of a bilinear resize."""
  pos = (np.arange(dst) + 0.5) * src / dst - 0.5
  pos = np.clip(pos, 0, src - 1)
  lo = np.floor(pos).astype(int)
  hi = np.minimum(lo + 1, src - 1)
  frac = pos - lo
  w = np.zeros((dst, src))
  w[np.arange(dst), lo] += 1 - frac
  w[np.arange(dst), hi] += frac
  return w


def aggregate(maps: Sequence[np.ndarray], out_res: int | None = None
              ) -> np.ndarray:
  """Attention maps (each (Q, Q) with Q = r*r, or (heads, Q, Q) averaged
  over heads) -> (R*R, R*R) rows summing to one, R = out_res or the
  largest r."""
  sides = []
  for m in maps:
    q = m.shape[-1]
    r = int(round(q ** 0.5))
    if r * r != q or m.shape[-2] != q:
      raise ValueError(f'An attention map must be (..., r*r, r*r) over a '
                       f'square grid; got {m.shape}.')
    sides.append(r)
  big = out_res or max(sides)
  total = np.zeros((big * big, big * big))
  for m, r in zip(maps, sides):
    a = np.asarray(m, np.float64)
    a = a.reshape(-1, r * r, r * r).mean(0) if a.ndim == 3 else a
    up = _bilinear_matrix(r, big)  # (big, r)
    keys = np.einsum('ab,qbc,dc->qad', up, a.reshape(r * r, r, r), up)
    keys = keys.reshape(r, r, big * big)
    rep = big // r
    if rep * r != big:
      raise ValueError(f'Resolution {r} does not divide the output '
                       f'resolution {big}.')
    queries = keys.repeat(rep, 0).repeat(rep, 1).reshape(big * big, -1)
    total += r * queries
  return total / total.sum(-1, keepdims=True)


def sym_kl(p: np.ndarray, q: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  """(P, K) x (Q, K) distributions -> (P, Q) symmetric KL distances."""
  lp, lq = np.log(p + eps), np.log(q + eps)
  ent_p = (p * lp).sum(-1)[:, None]
  ent_q = (q * lq).sum(-1)[None, :]
  kl_pq = ent_p - p @ lq.T
  kl_qp = ent_q - (q @ lp.T).T
  return 0.5 * (kl_pq + kl_qp)


def merge(attn: np.ndarray, *, anchors: int = 8, threshold: float = 1.0,
          iterations: int = 3) -> np.ndarray:
  """(R*R, R*R) aggregated attention -> (K, R*R) merged proposals."""
  big = int(round(attn.shape[0] ** 0.5))
  step = big / anchors
  idx = ((np.arange(anchors) + 0.5) * step).astype(int)
  rows = (idx[:, None] * big + idx[None, :]).ravel()
  props = attn[rows]
  for _ in range(iterations):
    d = sym_kl(props, props)
    free = np.ones(len(props), bool)
    out = []
    for i in range(len(props)):
      if not free[i]:
        continue
      group = free & (d[i] < threshold)
      group[i] = True
      out.append(props[group].mean(0))
      free &= ~group
    props = np.stack(out)
  return props


def assign(props: np.ndarray, image_size: int) -> np.ndarray:
  """(K, R*R) proposals -> (image_size, image_size) labels 0..K'-1."""
  big = int(round(props.shape[1] ** 0.5))
  labels = props.argmax(0).reshape(big, big)
  rep = image_size // big
  if rep * big != image_size:
    raise ValueError(f'Attention resolution {big} does not divide the '
                     f'image size {image_size}.')
  labels = labels.repeat(rep, 0).repeat(rep, 1)
  return np.unique(labels, return_inverse=True)[1].reshape(labels.shape)


def segment(maps: Sequence[np.ndarray], image_size: int, *,
            anchors: int = 8, threshold: float = 1.0,
            iterations: int = 3) -> np.ndarray:
  """DiffSeg on one image's attention maps -> (image_size,)*2 labels."""
  props = merge(aggregate(maps), anchors=anchors, threshold=threshold,
                iterations=iterations)
  return assign(props, image_size)


def miou(pred_HxW: np.ndarray, true_HxW: np.ndarray) -> float:
  """Mean IoU over ground-truth segments under the Hungarian matching of
  predicted to true segments (maximum total IoU)."""
  p_ids, p = np.unique(pred_HxW, return_inverse=True)
  t_ids, t = np.unique(true_HxW, return_inverse=True)
  inter = np.zeros((len(t_ids), len(p_ids)))
  np.add.at(inter, (t.ravel(), p.ravel()), 1)
  area_t = inter.sum(1, keepdims=True)
  area_p = inter.sum(0, keepdims=True)
  iou = inter / (area_t + area_p - inter)
  rows, cols = optimize.linear_sum_assignment(-iou)
  return float(iou[rows, cols].sum() / len(t_ids))


def kmeans_segment(image_HxWx3: np.ndarray, k: int, *, seed: int = 0,
                   xy_weight: float = 0.0) -> np.ndarray:
  """The k-means baseline: clusters of pixel colours (and, with xy_weight,
  positions), labels 0..k-1."""
  h, w, _ = image_HxWx3.shape
  feats = image_HxWx3.reshape(-1, 3).astype(np.float64) / 255.0
  if xy_weight:
    yy, xx = np.mgrid[:h, :w]
    feats = np.concatenate([feats, xy_weight * np.stack(
        [yy.ravel() / h, xx.ravel() / w], 1)], 1)
  # No more clusters than distinct points (a plain image is one segment).
  k = min(k, len(np.unique(feats, axis=0)))
  if k <= 1:
    return np.zeros((h, w), int)
  _, labels = vq.kmeans2(feats, k, seed=seed, minit='++')
  return labels.reshape(h, w)
