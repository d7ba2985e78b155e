"""Diffusion classifiers reach Bayes-optimal accuracy with exact scores."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from visgen.classification.diffusion_classifier import DiffusionClassifier
from visgen.classification.diffusion_classifier import (
  bayes_accuracy_sampling_error,
)
from visgen.groundtruth import make_mixture
from visgen.interpolants import get_path


@pytest.fixture(scope='module')
def problem():
  # Overlapping classes, so the Bayes accuracy is well below 1.
  g = make_mixture(jax.random.key(7), dim=2, num_components=6, num_classes=3,
                   scale=1.0, std=0.5)
  n = 800
  x, lab = g.sample(jax.random.key(8), n)
  log_prior = jnp.log(jnp.asarray(
      [g.weights[g.labels == c].sum() for c in range(3)]))
  exact = jnp.stack([g.log_prob(x, label=jnp.full((n,), c)) for c in range(3)],
                    -1) + log_prior
  return g, x, lab, log_prior, exact


@pytest.mark.parametrize('path_name,kind', [('vp', 'eps'),
                                            ('linear', 'velocity')])
def test_matches_bayes_optimal_classifier(problem, path_name, kind):
  g, x, lab, log_prior, exact = problem
  p = get_path(path_name)
  dc = DiffusionClassifier(g.denoiser(path=p, kind=kind), p, kind, 3,
                           t_min=1e-3, log_prior=log_prior)
  logits = jax.jit(lambda x, k: dc.logits(x, k, num_draws=128))(
      x, jax.random.key(9))
  bayes_acc = float(jnp.mean(jnp.argmax(exact, -1) == lab))
  acc = float(jnp.mean(jnp.argmax(logits, -1) == lab))
  assert bayes_acc < 0.95  # the test is informative only if classes overlap
  se = bayes_accuracy_sampling_error(bayes_acc, x.shape[0])
  assert abs(acc - bayes_acc) < 3 * se, (acc, bayes_acc, se)
  # The estimated log-likelihood ratios track the exact ones.
  est = np.asarray(logits[:, 1:] - logits[:, :1]).ravel()
  ref = np.asarray(exact[:, 1:] - exact[:, :1]).ravel()
  assert np.corrcoef(est, ref)[0, 1] > 0.99


def test_adaptive_schedule_prunes_and_agrees(problem):
  g, x, lab, log_prior, exact = problem
  p = get_path('vp')
  dc = DiffusionClassifier(g.denoiser(path=p, kind='eps'), p, 'eps', 3,
                           t_min=1e-3, log_prior=log_prior)
  pred, nfe = dc.classify_adaptive(x, jax.random.key(10),
                                   stages=((32, 2), (128, 1)))
  assert nfe == 32 * 3 + 128 * 2
  agree = float(jnp.mean(pred == jnp.argmax(exact, -1)))
  assert agree > 0.85
  bayes_acc = float(jnp.mean(jnp.argmax(exact, -1) == lab))
  assert float(jnp.mean(pred == lab)) > bayes_acc - 0.05
