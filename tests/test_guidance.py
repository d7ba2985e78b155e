"""Guidance combinators against exact class-conditional mixture scores."""

import jax
import jax.numpy as jnp
import numpy as np

from visgen.groundtruth import make_mixture
from visgen.interpolants import get_path
from visgen.objectives import predictions
from visgen.samplers import guidance

GMM = make_mixture(jax.random.PRNGKey(3), dim=2, num_components=4,
                   num_classes=2)
PATH = get_path('vp')
B = 64
X = 1.5 * jax.random.normal(jax.random.PRNGKey(0), (B, 2))
T = jnp.linspace(0.05, 0.95, B)
COND = {'label': jnp.arange(B) % 2}
NULL = {'label': jnp.full((B,), 2)}  # label == num_classes: unconditional


def _fn(kind='eps'):
  return GMM.denoiser(path=PATH, kind=kind)


def test_cfg_formula_and_limits():
  fn = _fn()
  d_c, d_u = jax.jit(lambda: (fn(X, T, COND), fn(X, T, NULL)))()
  run = jax.jit(lambda s: guidance.cfg(fn, s, null_cond=NULL)(X, T, COND))
  np.testing.assert_allclose(run(1.0), d_c, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(run(0.0), d_u, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(run(3.0), d_u + 3.0 * (d_c - d_u), atol=1e-5)
  assert run._cache_size() == 1  # pylint: disable=protected-access


def test_cfg_is_the_same_in_every_prediction_space():
  fn = _fn('v')
  spaces = ('x0', 'eps', 'score', 'velocity')
  ref, *outs = jax.jit(lambda: [guidance.cfg(fn, 2.5, null_cond=NULL)(
      X, T, COND)] + [guidance.cfg(fn, 2.5, null_cond=NULL, path=PATH,
                                   prediction='v', space=space)(X, T, COND)
                      for space in spaces])()
  for out in outs:
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)


def test_cfg_interval_and_rescale():
  fn = _fn('x0')
  d_c, out, rescaled = jax.jit(lambda: (
      fn(X, T, COND),
      guidance.cfg(fn, 4.0, null_cond=NULL, t_interval=(0.3, 0.6))(
          X, T, COND),
      guidance.cfg(fn, 4.0, null_cond=NULL, rescale=1.0, path=PATH,
                   prediction='x0', space='x0')(X, T, COND)))()
  inside = (T >= 0.3) & (T <= 0.6)
  np.testing.assert_allclose(out[~inside], d_c[~inside], atol=1e-6)
  assert not np.allclose(out[inside], d_c[inside], atol=1e-3)
  lo, hi = guidance.t_interval_from_sigma(PATH, 0.5, 2.0)
  s = PATH.sigma(jnp.array([lo, hi])) / PATH.alpha(jnp.array([lo, hi]))
  np.testing.assert_allclose(s, [0.5, 2.0], rtol=1e-4)
  # phi = 1 matches the per-example std of D_c in the chosen space.
  np.testing.assert_allclose(jnp.std(rescaled, -1), jnp.std(d_c, -1),
                             rtol=1e-4)


def _log_classifier(x, t, cond):
  """Exact log p(label | x_t) = log p_t(x | label) + log P(label) -
  log p_t(x)."""
  lab = cond['label']
  prior = jnp.log(jnp.array([jnp.sum(GMM.weights * (GMM.labels == c))
                             for c in range(2)]))[lab]
  return (GMM.log_prob_t(x, t, path=PATH, label=lab) + prior
          - GMM.log_prob_t(x, t, path=PATH))


def test_classifier_guidance_with_exact_classifier_gives_conditional():
  uncond = lambda x, t, cond: _fn('velocity')(x, t, {**cond, **NULL})
  guided = guidance.classifier_guidance(uncond, _log_classifier, 1.0,
                                        path=PATH, prediction='velocity')
  score = lambda c: predictions.convert(
      _fn()(X, T, c), src='eps', dst='score', x_t=X, t=T, path=PATH)
  got, want, shift, score_c, score_u = jax.jit(lambda: (
      guided(X, T, COND), _fn('velocity')(X, T, COND),
      guidance.classifier_mean_shift(_log_classifier, 2.0)(X, T, COND),
      score(COND), score(NULL)))()
  np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)
  # Mean-shift form: scale * grad log p(c | x) = score_c - score_u.
  np.testing.assert_allclose(shift, 2.0 * (score_c - score_u), atol=2e-3,
                             rtol=1e-3)
