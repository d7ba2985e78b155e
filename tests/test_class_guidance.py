"""Guidance on exact Gaussian mixtures: CFG and classifier guidance.

The references are independent of the combinators: scores are jax.grad of
the mixture's exact log-density log p_t(x | y) (or of the null-label
marginal), and the analytic classifier is Bayes' rule on those densities,
log p(y | x_t) = log p_t(x_t | y) + log pi_y - log p_t(x_t).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from visgen import samplers
from visgen.classification import guidance
from visgen.groundtruth import make_mixture
from visgen.interpolants import get_path
from visgen.objectives import predictions
from visgen.samplers import guidance as sg

K = 3  # classes; label K is the null (unconditional) label


@pytest.fixture(scope='module')
def mix():
  g = make_mixture(jax.random.key(3), dim=2, num_components=6, num_classes=K,
                   scale=1.5, std=0.4)
  x = jax.random.normal(jax.random.key(4), (12, 2)) * 1.5
  t = jnp.linspace(0.1, 0.9, 12)
  y = jnp.arange(12, dtype=jnp.int32) % K
  return g, x, t, y


def exact_score(g, path, x, t, label):
  return jax.grad(lambda x: jnp.sum(g.log_prob_t(x, t, path=path,
                                                 label=label)))(x)


def log_classifier(g, path):
  """log p(y | x_t) by Bayes' rule on the exact marginals."""
  log_pi = jnp.log(jnp.asarray([g.weights[g.labels == c].sum()
                                for c in range(K)]))

  def fn(x, t, labels):
    n = x.shape[0]
    joint = g.log_prob_t(x, t, path=path, label=labels) + log_pi[labels]
    return joint - g.log_prob_t(x, t, path=path,
                                label=jnp.full((n,), K, jnp.int32))

  return fn


def to_score(pred, kind, path, x, t):
  eps = predictions.convert(pred, src=kind, dst='eps', x_t=x, t=t, path=path)
  return -eps / path.sigma(t)[:, None]


@pytest.mark.parametrize('path_name,kind', [('vp', 'eps'),
                                            ('linear', 'velocity')])
@pytest.mark.parametrize('scale', [0.0, 1.0, 3.0])
def test_cfg_equals_analytic_guided_score(mix, path_name, kind, scale):
  g, x, t, y = mix
  path = get_path(path_name)
  den = guidance.cfg(g.denoiser(path=path, kind=kind), scale=scale,
                     null_class=K)
  got = to_score(den(x, t, {'label': y}), kind, path, x, t)
  s_c = exact_score(g, path, x, t, y)
  s_u = exact_score(g, path, x, t, jnp.full_like(y, K))
  np.testing.assert_allclose(got, s_u + scale * (s_c - s_u), rtol=2e-4,
                             atol=2e-4)


def test_cfg_options_channels_interval_rescale(mix):
  g, x, t, y = mix
  path = get_path('vp')
  raw = g.denoiser(path=path, kind='eps')
  c = raw(x, t, {'label': y})
  u = raw(x, t, {'label': jnp.full_like(y, K)})
  full = u + 3.0 * (c - u)
  # DiT's partial guidance: the first channel guided, the rest conditional.
  part = guidance.cfg(raw, scale=3.0, null_class=K, channels=1)(
      x, t, {'label': y})
  np.testing.assert_allclose(part[:, 0], full[:, 0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(part[:, 1], c[:, 1], rtol=1e-5, atol=1e-5)
  # Guidance only for t in [0.3, 0.6]; conditional elsewhere.
  iv = guidance.cfg(raw, scale=3.0, null_class=K, interval=(0.3, 0.6))(
      x, t, {'label': y})
  inside = np.asarray((t >= 0.3) & (t <= 0.6))
  assert 0 < inside.sum() < len(inside)
  np.testing.assert_allclose(iv[inside], full[inside], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(iv[~inside], c[~inside], rtol=1e-5, atol=1e-5)
  # Rescale phi = 1 restores the conditional per-example std; phi = 0.5 is
  # the average of that and plain CFG.
  r1 = guidance.cfg(raw, scale=3.0, null_class=K, rescale=1.0)(
      x, t, {'label': y})
  np.testing.assert_allclose(np.std(r1, -1), np.std(c, -1), rtol=1e-4)
  np.testing.assert_allclose(r1 / full, np.broadcast_to(
      (np.std(c, -1) / np.std(full, -1))[:, None], full.shape), rtol=1e-4)
  rh = guidance.cfg(raw, scale=3.0, null_class=K, rescale=0.5)(
      x, t, {'label': y})
  np.testing.assert_allclose(rh, 0.5 * (r1 + full), rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match='channels'):
    guidance.cfg(raw, scale=2.0, null_class=K, channels=3)(x, t,
                                                           {'label': y})


@pytest.mark.parametrize('path_name,kind', [('vp', 'eps'),
                                            ('linear', 'velocity')])
def test_classifier_guidance_at_scale_one_is_the_conditional_score(
    mix, path_name, kind):
  """grad log p(y | x_t) + unconditional score = conditional score."""
  g, x, t, y = mix
  path = get_path(path_name)
  uncond = guidance.with_label(g.denoiser(path=path, kind=kind), K)
  logp = log_classifier(g, path)
  # The analytic classifier's gradient really is the score difference.
  grad = guidance.classifier_grad(logp, x, t, y)
  s_c = exact_score(g, path, x, t, y)
  s_u = exact_score(g, path, x, t, jnp.full_like(y, K))
  np.testing.assert_allclose(grad, s_c - s_u, rtol=1e-4, atol=1e-4)
  for scale in (1.0, 2.5):
    den = guidance.classifier_guided(uncond, logp, scale=scale, path=path,
                                     prediction=kind)
    got = to_score(den(x, t, {'label': y}), kind, path, x, t)
    np.testing.assert_allclose(got, s_u + scale * (s_c - s_u), rtol=2e-4,
                               atol=2e-4)
  # Scale 1 on the unconditional model equals the conditional denoiser's
  # own prediction, in its own kind.
  den = guidance.classifier_guided(uncond, logp, scale=1.0, path=path,
                                   prediction=kind)
  cond_pred = g.denoiser(path=path, kind=kind)(x, t, {'label': y})
  np.testing.assert_allclose(den(x, t, {'label': y}), cond_pred, rtol=2e-4,
                             atol=2e-4)


def test_mean_shift_form_adds_posterior_variance_times_gradient(mix):
  """One DDPM step: guided - unguided = Sigma s grad log p(y | x_t)."""
  g, x, _, y = mix
  path = get_path('vp')
  den = guidance.with_label(g.denoiser(path=path, kind='eps'), K)
  logp = log_classifier(g, path)
  ts = jnp.asarray([0.5, 0.45])
  key = jax.random.key(5)
  kw = dict(path=path, prediction='eps', ts=ts, x_init=x, key=key,
            cond={'label': y})
  plain = samplers.sample('ddpm', den, **kw)
  shifted = samplers.sample(
      'ddpm', den, mean_shift=guidance.classifier_mean_shift(logp, scale=2.0),
      **kw)
  t, s = ts[0], ts[1]
  a = path.alpha(t) / path.alpha(s)
  b = path.sigma(t) ** 2 - a**2 * path.sigma(s) ** 2
  var = b * path.sigma(s) ** 2 / path.sigma(t) ** 2
  grad = exact_score(g, path, x, jnp.full((12,), t), y) - exact_score(
      g, path, x, jnp.full((12,), t), jnp.full_like(y, K))
  np.testing.assert_allclose(shifted - plain, var * 2.0 * grad, rtol=1e-3,
                             atol=1e-5)


def test_changing_guidance_scales_never_recompiles(mix):
  g, _, _, _ = mix
  path = get_path('linear')
  raw = g.denoiser(path=path, kind='velocity')
  logp = log_classifier(g, path)
  traces = []
  labels = jnp.arange(8, dtype=jnp.int32) % K

  @jax.jit
  def draw(cfg_scale, cls_scale, lo, key):
    traces.append(1)
    den = guidance.cfg(raw, scale=cfg_scale, null_class=K, interval=(lo, 1.0),
                       rescale=0.2)
    den = guidance.classifier_guided(den, logp, scale=cls_scale, path=path,
                                     prediction='velocity')
    ts = samplers.make_grid('uniform', 4, path=path)
    return samplers.sample('heun', den, path=path, prediction='velocity',
                           ts=ts, key=key, shape=(8, 2),
                           cond={'label': labels})

  key = jax.random.key(0)
  outs = [draw(jnp.float32(c), jnp.float32(s), jnp.float32(lo), key)
          for c, s, lo in ((1.0, 0.0, 0.0), (2.0, 0.5, 0.1), (4.0, 1.0, 0.3))]
  assert len(traces) == 1
  assert draw._cache_size() == 1
  # The scales are really used: different scales, different samples.
  assert float(jnp.max(jnp.abs(outs[0] - outs[2]))) > 1e-3


def test_samplers_guidance_module_on_the_exact_mixture(mix):
  """The samplers engineer's combinators (visgen.samplers.guidance) meet the
  same exact references away from alpha = 0, and agree with ours."""
  g, x, t, y = mix
  path = get_path('linear')
  raw = g.denoiser(path=path, kind='velocity')
  s_c = exact_score(g, path, x, t, y)
  s_u = exact_score(g, path, x, t, jnp.full_like(y, K))
  null = {'label': jnp.full_like(y, K)}
  den = sg.cfg(raw, 2.5, null_cond=null)
  np.testing.assert_allclose(
      to_score(den(x, t, {'label': y}), 'velocity', path, x, t),
      s_u + 2.5 * (s_c - s_u), rtol=2e-4, atol=2e-4)
  logp = log_classifier(g, path)
  den = sg.classifier_guidance(
      guidance.with_label(raw, K), lambda x, t, c: logp(x, t, c['label']),
      1.0, path=path, prediction='velocity')
  np.testing.assert_allclose(
      to_score(den(x, t, {'label': y}), 'velocity', path, x, t), s_c,
      rtol=2e-4, atol=2e-4)
  shift = sg.classifier_mean_shift(lambda x, t, c: logp(x, t, c['label']),
                                   2.0)(x, t, {'label': y})
  np.testing.assert_allclose(
      shift, guidance.classifier_mean_shift(logp, scale=2.0)(
          x, t, {'label': y}), rtol=1e-5, atol=1e-6)


def test_score_form_leaves_alpha_zero_unguided(mix):
  """At t = 1 of rectified flow alpha = 0: the x0 shift sigma^2/alpha grad is
  undefined, so the prediction stays the base one (finite, not NaN)."""
  g, x, _, y = mix
  path = get_path('linear')
  raw = g.denoiser(path=path, kind='velocity')
  t1 = jnp.ones((x.shape[0],))
  den = guidance.classifier_guided(raw, log_classifier(g, path), scale=3.0,
                                   path=path, prediction='velocity')
  out = den(x, t1, {'label': y})
  np.testing.assert_allclose(out, raw(x, t1, {'label': y}), rtol=1e-5,
                             atol=1e-6)
