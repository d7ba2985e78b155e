"""EDM's input preconditioning (c_in, c_noise) and its use by the task."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import edm_cifar10
from visgen.interpolants import get_path
from visgen.objectives import precond
from visgen.objectives import predictions
from visgen.tasks import get_task

SD = 0.5  # EDM's sigma_data


def _edm_reference(f_fn, x_hat, s):
  """Karras et al. (2022), Table 1, in float64: c_skip x + c_out F(c_in x,
  c_noise) with x = x_hat, sigma = s."""
  s = np.asarray(s, np.float64)[:, None]
  c_skip = SD**2 / (s**2 + SD**2)
  c_out = s * SD / np.sqrt(s**2 + SD**2)
  c_in = 1 / np.sqrt(s**2 + SD**2)
  c_noise = np.log(s) / 4
  return c_skip * x_hat + c_out * f_fn(c_in * x_hat, c_noise)


def _known_f(x_in, c_noise):
  # Nonlinear in both arguments, so a wrong input scale or noise label shows.
  return np.tanh(x_in) * (1 + c_noise) + 0.3 * c_noise**2


@pytest.mark.parametrize('name', ['edm', 'vp'])
def test_preconditioned_denoiser_is_edms_formula(name):
  path = get_path(name)
  t = jnp.linspace(0.05, 0.95, 7)
  x_t = jax.random.normal(jax.random.key(0), (7, 5)) * 3.0
  f_jax = lambda x_in, t_in, cond: _known_f(x_in, t_in[:, None])
  net = precond.precondition(f_jax, path=path, mode='edm')
  f_out = net(x_t, t, {})
  d, _ = predictions.to_x0_eps(f_out, kind='edm', x_t=x_t, t=t, path=path)
  alpha = np.asarray(path.alpha(t), np.float64)[:, None]
  s = np.asarray(path.sigma(t), np.float64) / alpha[:, 0]
  # EDM writes x_t = alpha (x_hat + s eps); D estimates x0 from x_hat.
  want = _edm_reference(
      lambda x, c: _known_f(x, c), np.asarray(x_t, np.float64) / alpha, s)
  np.testing.assert_allclose(d, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize('name', ['edm', 'vp', 'linear', 'ddpm_cosine'])
def test_network_input_has_unit_std_at_every_noise_level(name):
  path = get_path(name, t_max=0.999) if name == 'linear' else get_path(name)
  n, d = 9, 4096
  t = jnp.linspace(path.t_min, path.t_max, n)
  k0, k1 = jax.random.split(jax.random.key(1))
  x0 = SD * jax.random.normal(k0, (n, d))  # data ~ N(0, sigma_data^2 I)
  x_t = path.sample_xt(x0=x0, eps=jax.random.normal(k1, (n, d)), t=t)
  x_in, _ = precond.network_inputs(x_t=x_t, t=t, path=path, mode='c_in')
  np.testing.assert_allclose(jnp.std(x_in, axis=-1), 1.0, atol=0.04)
  if name == 'edm':
    assert float(jnp.std(x_t[-1])) > 70  # raw x_t at sigma = 80


def test_noise_conditioning_and_modes():
  path = get_path('edm')
  t = jnp.linspace(0.0, 1.0, 5)
  x = jnp.ones((5, 3))
  x_in, t_in = precond.network_inputs(x_t=x, t=t, path=path, mode='edm')
  np.testing.assert_allclose(t_in, np.log(np.asarray(path.sigma(t))) / 4,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      x_in[:, 0], 1 / np.sqrt(np.asarray(path.sigma(t)) ** 2 + SD**2),
      rtol=1e-6)
  x_in, t_in = precond.network_inputs(x_t=x, t=t, path=path, mode='none')
  assert x_in is x and t_in is t
  assert precond.resolve_mode(None, prediction='edm', path=path) == 'edm'
  assert precond.resolve_mode(None, prediction='eps', path=path) == 'none'
  assert precond.resolve_mode(
      None, prediction='edm', path=get_path('bridge_ve')) == 'none'
  with pytest.raises(ValueError, match='valid choices'):
    precond.resolve_mode('karras', prediction='edm', path=path)
  with pytest.raises(ValueError, match='bridge'):
    precond.precondition(lambda *a: a, path=get_path('bridge_vp'),
                         mode='c_in')
  with pytest.raises(ValueError, match='infinite'):
    precond.precondition(lambda *a: a, path=get_path('linear'), mode='edm')


def test_edm_config_task_loss_and_sampler_see_the_preconditioned_network():
  config = edm_cifar10.get_config('runlocal')
  assert (config.precond, config.prediction, config.sampler.name) == (
      'edm', 'edm', 'edm')
  assert config.model.t_scale == 1.0
  seen = []

  def record(x_in, t_in):
    seen.append((np.asarray(x_in), np.asarray(t_in)))

  def fake_apply(params, x, t, cond, **kw):
    del params, cond, kw
    jax.debug.callback(record, x, t)
    return jnp.zeros_like(x)

  task = get_task(config, apply=fake_apply)
  path = task.path
  # Loss: data ~ N(0, sigma_data^2) quantised to uint8 images.
  b = 16
  z = SD * np.random.default_rng(0).standard_normal((b,) + task.x_shape)
  images = np.clip(np.round((z + 1) * 127.5), 0, 255).astype(np.uint8)
  task.loss({}, None, task.init_state(jax.random.key(0)),
            {'image': jnp.asarray(images)}, jax.random.key(0))
  jax.effects_barrier()
  (x_in, t_in), = seen
  sigma = np.exp(4 * t_in)  # c_noise = ln(sigma) / 4 on alpha = 1
  assert np.all((sigma > 0.0019) & (sigma < 80.1)), sigma
  assert sigma.max() / sigma.min() > 10  # log-normal sigma, not one level
  std = x_in.reshape(b, -1).std(-1)
  np.testing.assert_allclose(std, 1.0, atol=0.25)

  # Sampling: the same network function, every NFE.
  seen.clear()
  task.sample({}, None, {}, jax.random.key(1), n=4)
  jax.effects_barrier()
  ts = np.linspace(1.0, 0.0, config.sampler.steps + 1)
  levels = np.log(np.asarray(path.sigma(jnp.asarray(ts)))) / 4
  assert len(seen) == 2 * config.sampler.steps + 1  # Heun + final D
  for x_in, t_in in seen:
    assert np.min(np.abs(t_in[0] - levels)) < 1e-5, (t_in, levels)
  x_first = seen[0][0]
  assert 0.7 < x_first.std() < 1.3  # the prior x ~ N(0, 80^2), scaled
