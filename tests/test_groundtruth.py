"""The Gaussian-mixture ground truth itself: samples, densities, scores."""

import jax
import jax.numpy as jnp
import numpy as np

from visgen.groundtruth import make_mixture
from visgen.interpolants import get_path


def test_samples_have_the_mixture_moments():
  g = make_mixture(jax.random.key(0), dim=3, num_components=4)
  x, _ = g.sample(jax.random.key(1), 100000)
  mean = jnp.einsum('k,kd->d', g.weights, g.means)
  second = jnp.einsum('k,kde->de', g.weights,
                      g.covs + jnp.einsum('kd,ke->kde', g.means, g.means))
  cov = second - jnp.outer(mean, mean)
  np.testing.assert_allclose(jnp.mean(x, 0), mean, atol=0.03)
  np.testing.assert_allclose(jnp.cov(x.T), cov, atol=0.06)


def test_score_is_the_gradient_of_the_marginal_log_density():
  g = make_mixture(jax.random.key(2), dim=2, num_components=3, num_classes=2)
  for name in ['vp', 'edm', 'linear', 'bridge_vp']:
    p = get_path(name)
    x, _ = g.sample(jax.random.key(3), 6)
    t = jnp.linspace(0.1, 0.9, 6)
    y = jnp.ones_like(x) if p.is_bridge else None
    for label in (None, jnp.array([0, 1, 2, 0, 1, 2])):  # 2 = null label
      def logp(xx, tt, yy, ll, label=label):
        return g.log_prob_t(
            xx[None], tt[None], path=p, y=None if y is None else yy[None],
            label=None if label is None else ll[None])[0]
      yy = jnp.zeros_like(x) if y is None else y
      ll = jnp.zeros(6, jnp.int32) if label is None else label
      grad = jax.jit(jax.vmap(jax.grad(logp)))(x, t, yy, ll)
      _, score, _ = g.posterior(x, t, path=p, label=label, y=y)
      np.testing.assert_allclose(score, grad, atol=1e-4, err_msg=name)


def test_class_conditional_sampling_and_density():
  g = make_mixture(jax.random.key(4), dim=2, num_components=4, num_classes=2)
  x, lab = g.sample(jax.random.key(5), 500, label=1)
  np.testing.assert_array_equal(lab, 1)
  # p(x) = sum_c p(c) p(x | c).
  x, _ = g.sample(jax.random.key(6), 5)
  p_c = jnp.asarray([g.weights[g.labels == c].sum() for c in (0, 1)])
  mix = sum(p_c[c] * jnp.exp(g.log_prob(x, label=jnp.full((5,), c)))
            for c in (0, 1))
  np.testing.assert_allclose(mix, jnp.exp(g.log_prob(x)), rtol=1e-5)
