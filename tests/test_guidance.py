"""Guidance combinators on exact class-conditional Gaussian mixtures.

The references are independent of the combinators: scores are jax.grad of
the mixture's exact log-density log p_t(x | y) (label K: the null-label
marginal), and the analytic classifier is Bayes' rule on those densities,
log p(y | x_t) = log p_t(x_t | y) + log pi_y - log p_t(x_t). Each test jits
its whole body once (few distinct shapes: the suite stays fast).
"""

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest

from visgen import samplers
from visgen.groundtruth import make_mixture
from visgen.interpolants import get_path
from visgen.objectives import predictions
from visgen.samplers import guidance
from visgen.tasks import generation

K = 3  # classes; label K is the null (unconditional) label
N = 12
GMM = make_mixture(jax.random.key(3), dim=2, num_components=6, num_classes=K,
                   scale=1.5, std=0.4)
X = jax.random.normal(jax.random.key(4), (N, 2)) * 1.5
T = jnp.linspace(0.1, 0.9, N)
Y = jnp.arange(N, dtype=jnp.int32) % K
NULL = jnp.full((N,), K, jnp.int32)


def exact_score(path, x, t, label):
  return jax.grad(lambda x: jnp.sum(GMM.log_prob_t(x, t, path=path,
                                                   label=label)))(x)


def log_classifier(path):
  """log p(y | x_t) by Bayes' rule on the exact marginals."""
  log_pi = jnp.log(jnp.asarray([GMM.weights[GMM.labels == c].sum()
                                for c in range(K)]))

  def fn(x, t, cond):
    lab = cond['label']
    joint = GMM.log_prob_t(x, t, path=path, label=lab) + log_pi[lab]
    return joint - GMM.log_prob_t(x, t, path=path,
                                  label=jnp.full(lab.shape, K, jnp.int32))

  return fn


def to_score(pred, kind, path, t=T):
  return predictions.convert(pred, src=kind, dst='score', x_t=X, t=t,
                             path=path)


@pytest.mark.parametrize('path_name,kind', [('vp', 'eps'),
                                            ('linear', 'velocity')])
def test_cfg_is_the_analytic_guided_score_in_every_space(path_name, kind):
  path = get_path(path_name)
  raw = GMM.denoiser(path=path, kind=kind)
  batches = []

  def counted(x, t, c):
    batches.append(x.shape[0])
    return raw(x, t, c)

  @jax.jit
  def run(s):
    cond = {'label': Y}
    outs = [
        guidance.cfg(counted, scale=s, null_class=K)(X, T, cond),
        guidance.cfg(raw, scale=s, null_cond={'label': NULL})(X, T, cond),
        guidance.cfg(raw, scale=s, null_cond=lambda c: dict(c, label=NULL))(
            X, T, cond)]
    outs += [guidance.cfg(raw, scale=s, null_class=K, path=path,
                          prediction=kind, space=space)(X, T, cond)
             for space in ('x0', 'eps', 'v', 'score', 'velocity')]
    refs = (to_score(raw(X, T, cond), kind, path),
            exact_score(path, X, T, Y), exact_score(path, X, T, NULL))
    return to_score(outs[0], kind, path), outs, refs

  for s in (0.0, 1.0, 3.0):
    got, outs, (s_raw, s_c, s_u) = run(jnp.float32(s))
    np.testing.assert_allclose(got, s_u + s * (s_c - s_u), rtol=2e-4,
                               atol=2e-4)
    for out in outs[1:]:  # null as dict / function; guided in every space
      np.testing.assert_allclose(out, outs[0], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(s_raw, s_c, rtol=2e-4, atol=2e-4)  # reference
  assert batches == [2 * N]  # one batched call on the (cond, null) halves
  assert run._cache_size() == 1  # pylint: disable=protected-access


def test_cfg_channels_interval_rescale():
  path = get_path('vp')
  raw = GMM.denoiser(path=path, kind='eps')
  cond = {'label': Y}
  lo, hi = guidance.t_interval_from_sigma(path, sigma_lo=0.5, sigma_hi=2.0)

  @jax.jit
  def run():
    c, u = raw(X, T, cond), raw(X, T, {'label': NULL})
    cfg = lambda **kw: guidance.cfg(raw, scale=3.0, null_class=K, **kw)(
        X, T, cond)
    to_x0 = lambda p: predictions.convert(p, src='eps', dst='x0', x_t=X,
                                          t=T, path=path)
    rx0 = cfg(rescale=1.0, path=path, prediction='eps', space='x0')
    return dict(c=c, u=u, part=cfg(channels=1), iv=cfg(interval=(0.3, 0.6)),
                r1=cfg(rescale=1.0), rh=cfg(rescale=0.5), c_x0=to_x0(c),
                rx0=to_x0(rx0), lohi=path.sigma(jnp.stack([lo, hi])) /
                path.alpha(jnp.stack([lo, hi])))

  o = jax.tree.map(np.asarray, run())
  c, u = o['c'], o['u']
  full = u + 3.0 * (c - u)
  # DiT's partial guidance: the first channel guided, the rest conditional.
  np.testing.assert_allclose(o['part'][:, 0], full[:, 0], rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(o['part'][:, 1], c[:, 1], rtol=1e-5, atol=1e-5)
  # Guidance only for t in [0.3, 0.6]; conditional elsewhere.
  inside = np.asarray((T >= 0.3) & (T <= 0.6))
  assert 0 < inside.sum() < N
  np.testing.assert_allclose(o['iv'][inside], full[inside], rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(o['iv'][~inside], c[~inside], rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(o['lohi'], [0.5, 2.0], rtol=1e-4)
  # Rescale phi = 1 restores the conditional per-example std (in the space
  # it is done in); phi = 0.5 is the average of that and plain CFG.
  ratio = np.std(c, -1) / np.std(full, -1)
  np.testing.assert_allclose(o['r1'], full * ratio[:, None], rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(np.std(o['r1'], -1), np.std(c, -1), rtol=1e-4)
  np.testing.assert_allclose(o['rh'], 0.5 * (o['r1'] + full), rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(np.std(o['rx0'], -1), np.std(o['c_x0'], -1),
                             rtol=1e-4)
  assert not np.allclose(o['rx0'], o['c_x0'], atol=1e-3)  # not just D_c


def test_cfg_bad_arguments_name_the_fix():
  raw = GMM.denoiser(path=get_path('vp'), kind='eps')
  cond = {'label': Y}
  with pytest.raises(ValueError, match='channels'):
    guidance.cfg(raw, scale=2.0, null_class=K, channels=3)(X, T, cond)
  with pytest.raises(ValueError, match='exactly one of null_class'):
    guidance.cfg(raw, scale=2.0)
  with pytest.raises(ValueError, match='needs path= and prediction='):
    guidance.cfg(raw, scale=2.0, null_class=K, rescale=0.5, space='x0')
  with pytest.raises(ValueError, match='replace entries'):
    guidance.cfg(raw, scale=2.0, null_cond={'label': NULL, 'extra': NULL})(
        X, T, cond)


@pytest.mark.parametrize('path_name,kind', [('vp', 'eps'),
                                            ('linear', 'velocity')])
def test_classifier_guidance_at_scale_one_is_the_conditional_score(
    path_name, kind):
  """grad log p(y | x_t) + unconditional score = conditional score."""
  path = get_path(path_name)
  raw = GMM.denoiser(path=path, kind=kind)
  uncond = guidance.with_label(raw, label=K)
  logp = log_classifier(path)
  cond = {'label': Y}
  t1 = jnp.ones((N,))  # alpha = 0 on the linear path

  @jax.jit
  def run(s):
    guided = lambda **kw: guidance.classifier_guidance(
        uncond, logp, scale=s, path=path, prediction=kind, **kw)
    at_one = guidance.classifier_guidance(raw, logp, scale=3.0, path=path,
                                          prediction=kind)(X, t1, cond)
    return dict(
        grad=guidance.classifier_grad(logp, x_t=X, t=T, cond=cond),
        s_c=exact_score(path, X, T, Y), s_u=exact_score(path, X, T, NULL),
        pred=guided()(X, T, cond), score=to_score(guided()(X, T, cond), kind,
                                                  path),
        iv=guided(interval=(0.3, 0.6))(X, T, cond), base=uncond(X, T, cond),
        cond_pred=raw(X, T, cond), at_one=at_one, raw_one=raw(X, t1, cond),
        shift=guidance.classifier_mean_shift(logp, scale=s)(X, T, cond),
        shift_iv=guidance.classifier_mean_shift(
            logp, scale=s, interval=(0.3, 0.6))(X, T, cond))

  for s in (1.0, 2.5):
    o = jax.tree.map(np.asarray, run(jnp.float32(s)))
    s_c, s_u = o['s_c'], o['s_u']
    # The analytic classifier's gradient really is the score difference.
    np.testing.assert_allclose(o['grad'], s_c - s_u, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(o['score'], s_u + s * (s_c - s_u), rtol=2e-4,
                               atol=2e-4)
    np.testing.assert_allclose(o['shift'], s * (s_c - s_u), rtol=1e-3,
                               atol=1e-3)
    inside = np.asarray((T >= 0.3) & (T <= 0.6))
    np.testing.assert_allclose(o['iv'][inside], o['pred'][inside],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(o['iv'][~inside], o['base'][~inside],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(o['shift_iv'][~inside], 0.0)
    np.testing.assert_allclose(o['shift_iv'][inside], o['shift'][inside])
  # Scale 1 on the unconditional model is the conditional denoiser's own
  # prediction, in its own kind.
  o = run(jnp.float32(1.0))
  np.testing.assert_allclose(o['pred'], o['cond_pred'], rtol=2e-4,
                             atol=2e-4)
  # Where alpha = 0 (t = 1 of rectified flow) the x0 shift sigma^2 / alpha
  # grad is undefined: the prediction stays the base one (finite, no NaN).
  assert np.all(np.isfinite(o['at_one']))
  if path_name == 'linear':
    np.testing.assert_allclose(o['at_one'], o['raw_one'], rtol=1e-5,
                               atol=1e-6)
  assert run._cache_size() == 1  # pylint: disable=protected-access


def test_mean_shift_form_adds_posterior_variance_times_gradient():
  """One DDPM step: guided - unguided = Sigma s grad log p(y | x_t)."""
  path = get_path('vp')
  den = guidance.with_label(GMM.denoiser(path=path, kind='eps'), label=K)
  logp = log_classifier(path)
  ts = jnp.asarray([0.5, 0.45])
  t_b = jnp.full((N,), ts[0])

  @jax.jit
  def run():
    kw = dict(path=path, prediction='eps', ts=ts, x_init=X,
              key=jax.random.key(5), cond={'label': Y})
    plain = samplers.sample('ddpm', den, **kw)
    shifted = samplers.sample(
        'ddpm', den, mean_shift=guidance.classifier_mean_shift(
            logp, scale=2.0), **kw)
    grad = exact_score(path, X, t_b, Y) - exact_score(path, X, t_b, NULL)
    return shifted - plain, grad

  diff, grad = run()
  t, s = ts[0], ts[1]
  a = path.alpha(t) / path.alpha(s)
  b = path.sigma(t) ** 2 - a**2 * path.sigma(s) ** 2
  var = b * path.sigma(s) ** 2 / path.sigma(t) ** 2
  np.testing.assert_allclose(diff, var * 2.0 * grad, rtol=1e-3, atol=1e-5)


def test_changing_guidance_values_never_recompiles():
  """Scales, rescale and interval are traced; the Heun grid starts at t = 1
  where alpha = 0 on the linear path (no NaN from classifier guidance)."""
  path = get_path('linear')
  raw = GMM.denoiser(path=path, kind='velocity')
  logp = log_classifier(path)
  traces = []
  labels = jnp.arange(8, dtype=jnp.int32) % K

  @jax.jit
  def draw(cfg_scale, cls_scale, lo, phi, key):
    traces.append(1)
    den = guidance.cfg(raw, scale=cfg_scale, null_class=K,
                       interval=(lo, 1.0), rescale=phi)
    den = guidance.classifier_guidance(den, logp, scale=cls_scale, path=path,
                                       prediction='velocity',
                                       interval=(lo, 1.0))
    ts = samplers.make_grid('uniform', 4, path=path)
    return samplers.sample('heun', den, path=path, prediction='velocity',
                           ts=ts, key=key, shape=(8, 2),
                           cond={'label': labels})

  key = jax.random.key(0)
  outs = [draw(*map(jnp.float32, v), key)
          for v in ((1.0, 0.0, 0.0, 0.0), (2.0, 0.5, 0.1, 0.3),
                    (4.0, 1.0, 0.3, 0.7))]
  assert len(traces) == 1
  assert draw._cache_size() == 1  # pylint: disable=protected-access
  assert all(np.all(np.isfinite(o)) for o in outs)
  # The values are really used: different values, different samples.
  assert float(jnp.max(jnp.abs(outs[0] - outs[2]))) > 1e-3


def test_generation_task_reads_cfg_options_from_the_sampler_config():
  """config.sampler.cfg_rescale / cfg_interval / cfg_channels reach `cfg`;
  without them the task guides as before (every t, no rescale)."""
  path = get_path('linear')
  raw = GMM.denoiser(path=path, kind='velocity')
  apply = lambda params, x, t, c: raw(x, t, c)

  def task(**sampler_opts):
    return generation.GenerationTask(mlc.ConfigDict(dict(
        task=dict(name='generation', num_classes=K, x_shape=(2,)),
        path=dict(name='linear'), prediction='velocity',
        weighting=dict(name='uniform'), time_dist=dict(name='uniform'),
        sampler=dict(name='euler', steps=4, cfg_scale=4.0,
                     **sampler_opts))), apply=apply)

  tasks = [task(), task(cfg_interval=(2.0, 3.0)),
           task(cfg_rescale=0.7, cfg_interval=(0.3, 1.0), cfg_channels=1)]
  key = jax.random.key(1)
  cond = {'label': Y}

  @jax.jit
  def run(s):
    got = [tk.sample({}, {}, cond, key, n=N, guidance=s)
           for tk in tasks]
    ts = samplers.make_grid('uniform', 4, path=path)
    want = [samplers.sample('euler', guidance.cfg(raw, scale=s, null_class=K,
                                                  **kw),
                            path=path, prediction='velocity', ts=ts,
                            key=key, shape=(N, 2), cond=cond)
            for kw in ({}, {'interval': (2.0, 3.0)},
                       {'rescale': 0.7, 'interval': (0.3, 1.0),
                        'channels': 1})]
    return got, want

  got, want = run(jnp.float32(4.0))
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
  cond_only, _ = run(jnp.float32(1.0))
  # An interval outside [0, 1]: never guided, the conditional samples.
  np.testing.assert_allclose(got[1], cond_only[1], rtol=1e-6, atol=1e-6)
  assert not np.allclose(got[0], cond_only[0], atol=1e-3)
  assert not np.allclose(got[2], got[0], atol=1e-3)
