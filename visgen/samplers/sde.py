"""Reverse-SDE samplers: Euler-Maruyama, predictor-corrector, annealed Langevin.

Derivation in visgen's convention (t = 0 data, marginals p_t with PF-ODE
velocity v, score s = grad log p_t). For any w(t) >= 0 the reverse-time SDE

  dx = [v(x, t) - w(t)^2 / 2 * s(x, t)] dt + w(t) dW,   t running 1 -> 0,

has the marginals p_t: with tau = 1 - t its Fokker-Planck equation reads
d p / d tau = div((v - w^2 s / 2) p) + w^2 / 2 lap p = div(v p), which is the
continuity equation of the PF-ODE backwards. Choices of w (`diffusion=`):

| form     | w(t)^2                                   | source             |
|----------|------------------------------------------|--------------------|
| sde      | d sigma^2/dt - 2 (alpha'/alpha) sigma^2  | the forward SDE g^2 |
| sigma    | 2 n sigma(t)                             | SiT's default       |
| constant | 2 n                                      | SiT 'constant'      |
| linear   | 2 n t                                    | SiT 'linear'        |
| sin2     | 2 n sin^2(pi t)                          | SiT 'incr.-decr.'   |

with n = `diffusion_scale` (traced). With 'sde' the drift is Score-SDE's
f x - g^2 s (VP: g^2 = beta; VE: g^2 = d sigma^2 / dt). SiT writes its SDE in
its own time (data at 1) as dx = [v + w_t s] dt + sqrt(2 w_t) dW, so its w_t
is our w^2 / 2. For a bridge with y fixed the same holds for z = x - gamma y,
and w = g reproduces DDBM's reverse SDE (drift f x - g^2 (s - grad log
p(y | x_t))). Euler-Maruyama from t to t + h (h < 0):
x <- x + h (v - w^2 s / 2) + w sqrt(-h) z.
"""

import jax
import jax.numpy as jnp

from visgen.samplers import base

DIFFUSIONS = ('sde', 'sigma', 'constant', 'linear', 'sin2')


def diffusion_sq(path, t, *, form, scale=1.0):
  """w(t)^2 of the reverse SDE for the given `form` (see module docstring)."""
  t = jnp.asarray(t, jnp.float32)
  if form == 'sde':
    alpha, sigma = path.alpha(t), path.sigma(t)
    g2 = 2 * sigma * path.d_sigma(t) - 2 * path.d_alpha(t) / alpha * sigma**2
    return scale * g2
  if form == 'sigma':
    return 2 * scale * path.sigma(t)
  if form == 'constant':
    return 2 * scale * jnp.ones_like(t)
  if form == 'linear':
    return 2 * scale * t
  if form == 'sin2':
    return 2 * scale * jnp.sin(jnp.pi * t) ** 2
  raise ValueError(f'Unknown diffusion form {form!r}. Valid choices: '
                   f'{", ".join(DIFFUSIONS)}.')


def check_diffusion(path, options):
  form = options.get('diffusion', 'sde')
  if form not in DIFFUSIONS:
    return (f'unknown diffusion form {form!r}; valid choices: '
            f'{", ".join(DIFFUSIONS)}')
  if form == 'sde':
    reason = base.alpha_positive(path, options)
    if reason:
      return ("diffusion='sde' uses g^2 with alpha'/alpha, and " + reason +
              " Or pass diffusion='sigma' (SiT's default).")
  return None


def em_step(view, x, t, t_next, key, form, scale):
  """One Euler-Maruyama step of the reverse SDE; returns (x, x_mean)."""
  h = t_next - t
  x0, eps = view.x0_eps(x, t)
  v = view.velocity_from(x0, eps, x, t)
  s = view.score_from(eps, x, t)
  w2 = diffusion_sq(view.path, t, form=form, scale=scale)
  x_mean = x + h * (v - 0.5 * w2 * s)
  noise = jax.random.normal(key, x.shape, x.dtype)
  return x_mean + jnp.sqrt(jnp.maximum(-h * w2, 0.0)) * noise, x_mean


@base.sampler(stochastic=True, checks=(check_diffusion,),
              summary='reverse SDE, Euler-Maruyama, tunable w(t)')
def euler_maruyama(view, x, ts, key, *, diffusion='sde', diffusion_scale=1.0):
  def body(i, x):
    return em_step(view, x, ts[i], ts[i + 1], jax.random.fold_in(key, i),
                    diffusion, diffusion_scale)[0]
  n = ts.shape[0] - 1
  return jax.lax.fori_loop(0, n, body, x), dict(nfe=n)


def _reverse_diffusion_step(view, x, t, t_next, key):
  """Score-SDE's reverse-diffusion predictor on the grid's own transition.

  The forward transition t_next -> t is x_t = a x_s + sqrt(b) z with
  a = alpha_t / alpha_s, b = sigma_t^2 - a^2 sigma_s^2; reversing it to first
  order gives x_s = (2 - a) x_t + b s + sqrt(b) z (VE: a = 1, exact
  Score-SDE; VP: a = sqrt(1 - beta_i)).
  """
  path = view.path
  a = path.alpha(t) / path.alpha(t_next)
  b = path.sigma(t) ** 2 - a**2 * path.sigma(t_next) ** 2
  shift = view.shift(x, t)
  _, eps = view.x0_eps(x, t)
  s = view.score_from(eps, x, t)
  z = x - shift
  z_mean = (2.0 - a) * z + b * s
  noise = jax.random.normal(key, x.shape, x.dtype)
  return z_mean + jnp.sqrt(jnp.maximum(b, 0.0)) * noise + view.shift(
      x, t_next)


def _langevin_step(view, x, t, alpha_ratio, snr, key):
  """Score-SDE's Langevin corrector with the signal-to-noise step size
  eps = 2 a (snr |z| / |s|)^2, norms averaged over the batch."""
  _, eps_hat = view.x0_eps(x, t)
  s = view.score_from(eps_hat, x, t)
  z = jax.random.normal(key, x.shape, x.dtype)
  norm = lambda u: jnp.mean(jnp.sqrt(jnp.sum(
      u.reshape(u.shape[0], -1) ** 2, -1)))
  step = 2.0 * alpha_ratio * (snr * norm(z) / norm(s)) ** 2
  return x + step * s + jnp.sqrt(2.0 * step) * z


def check_pc(path, options):
  if options.get('predictor', 'euler_maruyama') == 'reverse_diffusion':
    reason = base.alpha_positive(path, options)
    if reason:
      return "predictor='reverse_diffusion' " + reason
    if path.is_bridge:
      return "predictor='reverse_diffusion' needs an ordinary path."
  elif options.get('predictor', 'euler_maruyama') != 'euler_maruyama':
    return ("unknown predictor; valid choices: euler_maruyama, "
            'reverse_diffusion')
  return check_diffusion(path, options)


@base.sampler(stochastic=True, checks=(check_pc,),
              summary='predictor-corrector (Score-SDE), Langevin corrector')
def predictor_corrector(view, x, ts, key, *, predictor='euler_maruyama',
                        snr=0.16, num_corrector_steps=1, diffusion='sde',
                        diffusion_scale=1.0):
  """Score-SDE's PC sampler: at each t_i, `num_corrector_steps` Langevin
  steps targeting p_{t_i}, then one predictor step to t_{i+1}.

  The corrector's a_i = (alpha(t_i) / alpha(t_{i+1}))^2 is Score-SDE's
  1 - beta_i for VP and 1 for VE. NFE = N (num_corrector_steps + 1).
  """
  path = view.path

  def body(i, x):
    t, t_next = ts[i], ts[i + 1]
    k = jax.random.fold_in(key, i)
    a_ratio = (path.alpha(t) / path.alpha(t_next)) ** 2
    for j in range(num_corrector_steps):
      x = _langevin_step(view, x, t, a_ratio, snr, jax.random.fold_in(k, j + 1))
    if predictor == 'reverse_diffusion':
      return _reverse_diffusion_step(view, x, t, t_next,
                                     jax.random.fold_in(k, 0))
    return em_step(view, x, t, t_next, jax.random.fold_in(k, 0), diffusion,
                    diffusion_scale)[0]

  n = ts.shape[0] - 1
  return (jax.lax.fori_loop(0, n, body, x),
          dict(nfe=n * (num_corrector_steps + 1)))


@base.sampler(stochastic=True,
              checks=(base.variance_exploding,),
              summary="NCSN's annealed Langevin dynamics (alpha = 1 paths)")
def annealed_langevin(view, x, ts, key, *, step_size=2e-5,
                      num_inner_steps=5):
  """NCSN (Song & Ermon 2019), Algorithm 1: for each noise level sigma_i =
  sigma(ts[i]) run `num_inner_steps` Langevin steps
  x <- x + a_i / 2 * s + sqrt(a_i) z with a_i = step_size sigma_i^2 /
  sigma_L^2 (sigma_L = sigma(ts[-1])). NFE = len(ts) * num_inner_steps.
  """
  sigma_l = view.path.sigma(ts[-1])

  def level(i, x):
    t = ts[i]
    a = step_size * (view.path.sigma(t) / sigma_l) ** 2

    def inner(j, x):
      _, eps = view.x0_eps(x, t)
      s = view.score_from(eps, x, t)
      z = jax.random.normal(jax.random.fold_in(key, i * num_inner_steps + j),
                            x.shape, x.dtype)
      return x + 0.5 * a * s + jnp.sqrt(a) * z

    return jax.lax.fori_loop(0, num_inner_steps, inner, x)

  n = ts.shape[0]
  return jax.lax.fori_loop(0, n, level, x), dict(nfe=n * num_inner_steps)


