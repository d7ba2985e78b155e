"""Learned reverse variance improves few-step ancestral sampling (iDDPM).

  python -m experiments.learned_variance --workdir=/tmp/lv

Nichol & Dhariwal (2021) train the reverse-process variance with L_hybrid and
show that ancestral sampling then needs far fewer steps. Two checks:

1. Exact Gaussian mixture (8-D, 4 full-covariance components, ddpm_linear,
   T = 1000). With the exact posterior mean, ancestral sampling at N = 10 /
   25 / 50 network evaluations (iDDPM's respacing: N - 1 steps between evenly
   spaced times, then x0_hat) with the variance
   - 'beta' (DDPM's sigma^2 = beta) and 'beta_tilde' (the posterior's),
   - 'analytic' (Analytic-DPM, Bao et al. 2022: the optimal isotropic
     variance of each step, beta_tilde + B^2 E[tr Cov(x0 | x_t)] / d, the
     expectation over the batch at that step),
   - 'optimal' (the same per example and dimension: the exact
     beta_tilde + B^2 diag Cov(x0 | x_t) of the mixture, what a learned
     variance approximates),
   - 'optimal_v_transferred': the best a learned v can do under iDDPM's
     parameterisation: the exact optimum's interpolation weight on the
     training grid (steps of 1 / T), used on the respaced step,
   and a residual MLP (learn_sigma) trained with L_hybrid on the mixture,
   sampled with beta, beta_tilde and its learned variance. Error = sliced
   Wasserstein-1 to fresh data (the data-vs-data floor is printed).
2. Digits (8x8, 64-D): a learn_sigma residual MLP trained with L_hybrid
   (eps prediction, ddpm_cosine, T = 1000), sampled with beta, beta_tilde
   and the learned variance at 10 / 25 / 50 NFE with x0_hat clipped to
   [-1, 1] (iDDPM's clip_denoised; without it the cosine schedule's
   alpha(1) ~ 5e-5 amplifies eps errors and every variance fails);
   digits-FID / precision / recall against the test split on the project's
   digits feature net (not Inception: not comparable with published FIDs),
   averaged over sampling seeds.

Writes DIR/results.json, DIR/results.md (the tables) and DIR/error_vs_steps.png.
"""

import argparse
import functools
import json
import os
import time

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from visgen import models
from visgen import samplers
from visgen.data import digits
from visgen.data import preprocess
from visgen.evaluators import compare
from visgen.evaluators import feature_nets
from visgen.groundtruth import make_mixture
from visgen.groundtruth import sliced_wasserstein
from visgen.interpolants import get_path
from visgen.objectives import learned_variance as lv_lib
from visgen.objectives import loss as loss_lib

NFES = (10, 25, 50)
FIXED = ('beta', 'beta_tilde')
_SAMPLER_VARIANCE = dict(beta='beta', beta_tilde='posterior',
                         learned='learned')


# ---------------------------------------------------------------------------
# Exact reverse variances of a Gaussian mixture.
# ---------------------------------------------------------------------------
def posterior_x0_moments(gmm, x_t, t, *, path):
  """(E[x0 | x_t], diag Cov(x0 | x_t)) of an unconditional mixture.

  Per component k, x0 | x_t, k ~ N(m_k, P_k) with C_k = alpha^2 S_k +
  sigma^2 I, m_k = mu_k + alpha S_k C_k^{-1} (x_t - alpha mu_k) and
  P_k = S_k - alpha^2 S_k C_k^{-1} S_k; the mixture over k with the
  responsibilities r_k(x_t) has covariance sum_k r_k (P_k + m_k m_k^T) - m m^T.
  """
  t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x_t.shape[:1])
  _, _, r = gmm.posterior(x_t, t, path=path)  # (n, K)
  alpha, sigma = path.alpha(t), path.sigma(t)
  eye = jnp.eye(gmm.dim)
  cov = (alpha[:, None, None, None] ** 2 * gmm.covs[None]
         + sigma[:, None, None, None] ** 2 * eye)  # (n, K, D, D)
  diff = x_t[:, None] - alpha[:, None, None] * gmm.means[None]
  s_cinv = jnp.linalg.solve(cov, gmm.covs[None])  # C^-1 S, (n, K, D, D)
  m_k = gmm.means[None] + alpha[:, None, None] * jnp.einsum(
      'nkde,nke->nkd', jnp.swapaxes(s_cinv, -1, -2), diff)
  p_k = gmm.covs[None] - alpha[:, None, None, None] ** 2 * jnp.einsum(
      'kde,nkef->nkdf', gmm.covs, s_cinv)
  mean = jnp.einsum('nk,nkd->nd', r, m_k)
  second = jnp.einsum('nk,nkd->nd', r,
                      jnp.diagonal(p_k, axis1=-2, axis2=-1) + m_k**2)
  return mean, jnp.maximum(second - mean**2, 0.0)


def optimal_variance(gmm, *, path, isotropic=False):
  """`(x_t, t, s) -> variance` of the step s < t that matches the exact
  reverse moments: beta_tilde + B^2 Cov(x0 | x_t), with B the posterior
  mean's x0 coefficient. Per example and dimension, or (`isotropic`)
  Analytic-DPM's scalar, averaged over dimensions and the batch."""

  def fn(x_t, t, s):
    beta, beta_tilde = lv_lib.step_variances(path=path, t=t, s=s)
    b_coef = path.alpha(s) * beta / path.sigma(t) ** 2
    _, var_x0 = posterior_x0_moments(gmm, x_t, t, path=path)
    if isotropic:
      var_x0 = jnp.mean(var_x0)
    return beta_tilde + b_coef**2 * var_x0

  return fn


def transferred_optimal_variance(gmm, *, path, num_timesteps=1000):
  """`(x_t, t, s) -> variance`: the best a learned v can do under iDDPM's
  parameterisation. v is what the exact optimum is on the *training* grid
  (the fine step t - 1 / T to t: f* = (log var* - log beta_tilde) /
  (log beta - log beta_tilde)), then used on the step actually taken, as a
  learned v is when sampling with fewer steps (respacing)."""
  exact = optimal_variance(gmm, path=path)

  def fn(x_t, t, s):
    s_fine = jnp.maximum(t - 1.0 / num_timesteps, 0.0)
    beta_f, tilde_f = lv_lib.step_variances(path=path, t=t, s=s_fine)
    # v in [-1, 1] spans f in [0, 1]; where beta ~ beta_tilde on the fine
    # grid f is ill-determined (a 0 / 0), so it is kept inside that range.
    f = jnp.clip((jnp.log(exact(x_t, t, s_fine)) - jnp.log(tilde_f)) / (
        jnp.log(beta_f) - jnp.log(tilde_f)), 0.0, 1.0)
    beta, tilde = lv_lib.step_variances(path=path, t=t, s=s)
    return jnp.exp(f * jnp.log(beta) + (1.0 - f) * jnp.log(tilde))

  return fn


# ---------------------------------------------------------------------------
# Sampling with iDDPM's respacing.
# ---------------------------------------------------------------------------
def ancestral(denoise, *, path, prediction, nfe, variance, key, shape,
              cond=None, clip_x0=None):
  """N = nfe network calls: N - 1 ancestral steps on evenly spaced times
  t_max ... t_min, then x0_hat at t_min (iDDPM's respaced loop, whose last
  step returns the mean). `clip_x0`: iDDPM's clip_denoised (images)."""
  ts = samplers.make_grid('uniform', nfe - 1, path=path)
  x0 = samplers.sample('ddpm', denoise, key=key, shape=shape, cond=cond,
                       path=path, prediction=prediction, ts=ts,
                       variance=variance, clip_x0=clip_x0,
                       denoise_final=True)
  # The last step's x0_hat, clipped like every other one.
  return x0 if clip_x0 is None else jnp.clip(x0, -clip_x0, clip_x0)


# ---------------------------------------------------------------------------
# A small L_hybrid training loop (the same unified loss the task uses).
# ---------------------------------------------------------------------------
def train_hybrid(data_fn, *, dim, path, prediction, learned, steps, batch,
                 width, depth, lr, seed=0, log=print):
  """Trains a residual MLP (learn_sigma) with the unified loss + L_hybrid.

  `data_fn(key, n) -> x0 (n, dim)`. Returns (apply, EMA params, seconds).
  """
  model = models.get_model('mlp', rngs=nnx.Rngs(seed), dim=dim, width=width,
                           depth=depth, learn_sigma=True)
  graphdef, params = models.split_model(model)
  apply = models.make_apply(graphdef)
  sched = optax.warmup_cosine_decay_schedule(0.0, lr, min(200, steps // 10),
                                             steps, lr * 0.05)
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(sched))
  opt_state = opt.init(params)
  ema = params

  def loss_fn(p, key):
    k_x, k_l = jax.random.split(key)
    x0 = data_fn(k_x, batch)
    loss, aux = loss_lib.unified_loss(
        lambda x_t, t, c: apply(p, x_t, t, c), x0=x0, cond={}, key=k_l,
        path=path, prediction=prediction, weighting='uniform',
        time_dist='uniform', learned_variance=learned)
    return loss, (jnp.mean(aux['mse']), jnp.mean(aux['vlb']))

  @jax.jit
  def step(p, o, e, key):
    (loss, (mse, vlb)), g = jax.value_and_grad(loss_fn, has_aux=True)(p, key)
    upd, o = opt.update(g, o, p)
    p = optax.apply_updates(p, upd)
    e = jax.tree.map(lambda a, b: 0.999 * a + 0.001 * b, e, p)
    return p, o, e, loss, mse, vlb

  t0 = time.time()
  key = jax.random.key(seed + 1)
  for i in range(steps):
    params, opt_state, ema, loss, mse, vlb = step(
        params, opt_state, ema, jax.random.fold_in(key, i))
    if (i + 1) % max(steps // 5, 1) == 0:
      log(f'  step {i + 1}/{steps}: loss {float(loss):.4f} mse '
          f'{float(mse):.4f} L_vlb {float(vlb):.4f} bits/dim '
          f'({time.time() - t0:.0f} s)')
  return apply, ema, time.time() - t0


# ---------------------------------------------------------------------------
# Part 1: the exact mixture.
# ---------------------------------------------------------------------------
def mixture_part(*, n=4000, train_steps=3000, nfes=NFES, log=print):
  gmm = make_mixture(jax.random.key(3), dim=8, num_components=4, scale=2.0,
                     std=0.3, full_cov=True)
  path = get_path('ddpm_linear')
  ref, _ = gmm.sample(jax.random.key(100), 40_000)
  data, _ = gmm.sample(jax.random.key(101), n)
  floor = float(sliced_wasserstein(data, ref))
  exact = gmm.denoiser(path=path, kind='eps')
  shape = (n, gmm.dim)
  rows = {}
  runs = [('exact', exact, 'beta', 'beta'),
          ('exact', exact, 'beta_tilde', 'posterior'),
          ('exact', exact, 'analytic',
           optimal_variance(gmm, path=path, isotropic=True)),
          ('exact', exact, 'optimal', optimal_variance(gmm, path=path)),
          ('exact', exact, 'optimal_v_transferred',
           transferred_optimal_variance(gmm, path=path))]
  lv = lv_lib.LearnedVariance(decoder='gaussian')
  log(f'mixture: training a learn_sigma MLP with L_hybrid ({train_steps} '
      'steps)')
  apply, params, secs = train_hybrid(
      lambda k, b: gmm.sample(k, b)[0], dim=gmm.dim, path=path,
      prediction='eps', learned=lv, steps=train_steps, batch=256, width=256,
      depth=3, lr=1e-3, log=log)
  net = lambda x_t, t, c: apply(params, x_t, t, c)
  runs += [('mlp', net, name, _SAMPLER_VARIANCE[name])
           for name in ('beta', 'beta_tilde', 'learned')]
  for mean_src, den, name, variance in runs:
    errs = []
    for nfe in nfes:
      x = ancestral(den, path=path, prediction='eps', nfe=nfe,
                    variance=variance, key=jax.random.key(7), shape=shape)
      errs.append(float(sliced_wasserstein(x, ref)))
    rows[f'{mean_src}/{name}'] = errs
    log(f'  {mean_src:5s} mean, variance {name:10s}: SW1 ' +
        ' '.join(f'{e:.4f}' for e in errs))
  return dict(nfe=list(nfes), sw1=rows, floor=floor, n=n,
              train_seconds=round(secs, 1), train_steps=train_steps)


# ---------------------------------------------------------------------------
# Part 2: digits.
# ---------------------------------------------------------------------------
def digits_part(*, train_steps=4000, num_samples=1000, nfes=NFES, seeds=3,
                log=print):
  train = digits.load_digits_split('train', size=8)
  test = digits.load_digits_split('test', size=8)
  x_train = jnp.asarray(preprocess.to_float(train['image'])).reshape(
      len(train['image']), -1)
  path = get_path('ddpm_cosine')
  lv = lv_lib.LearnedVariance()  # discretized decoder: 8-bit images

  def data_fn(key, b):
    return x_train[jax.random.randint(key, (b,), 0, x_train.shape[0])]

  log(f'digits: training a learn_sigma MLP with L_hybrid ({train_steps} '
      'steps)')
  apply, params, secs = train_hybrid(
      data_fn, dim=x_train.shape[1], path=path, prediction='eps', learned=lv,
      steps=train_steps, batch=256, width=384, depth=4, lr=1e-3, log=log)
  net = feature_nets.get_feature_net('digits')
  ref = compare.gather(net, test['image'])
  floor = compare.metrics_between(ref, compare.gather(net, train['image']))
  den = lambda x_t, t, c: apply(params, x_t, t, c)
  rows = {}
  for name in ('beta', 'beta_tilde', 'learned'):
    rows[name] = []
    for nfe in nfes:
      per_seed = []
      for seed in range(seeds):  # the same keys for every variance
        x = ancestral(den, path=path, prediction='eps', nfe=nfe,
                      variance=_SAMPLER_VARIANCE[name],
                      key=jax.random.key(11 + seed),
                      shape=(num_samples, x_train.shape[1]), clip_x0=1.0)
        images = np.asarray(preprocess.to_uint8(x.reshape(
            (num_samples,) + test['image'].shape[1:])))
        per_seed.append(compare.metrics_between(
            ref, compare.gather(net, images)))
      m = {k: float(np.mean([p[k] for p in per_seed]))
           for k in ('fid', 'precision', 'recall')}
      m['fid_seeds'] = [float(p['fid']) for p in per_seed]
      m['fid_std'] = float(np.std(m['fid_seeds'], ddof=1)) if seeds > 1 else 0
      rows[name].append(m)
      log(f'  variance {name:10s} NFE {nfe:3d}: digits-FID {m["fid"]:.2f} '
          f'(sd {m["fid_std"]:.2f} over {seeds} seeds) precision '
          f'{m["precision"]:.3f} recall {m["recall"]:.3f}')
  return dict(nfe=list(nfes), metrics=rows, num_samples=num_samples,
              seeds=seeds,
              floor_fid_train_vs_test=float(floor['fid']),
              train_seconds=round(secs, 1), train_steps=train_steps)


# ---------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------
def markdown(results) -> str:
  mix = results['mixture']
  lines = ['### Exact mixture (8-D): sliced W1 to data, ancestral sampling',
           '', '| mean | variance | ' + ' | '.join(
               f'NFE {n}' for n in mix['nfe']) + ' |',
           '|---|---|' + '---|' * len(mix['nfe'])]
  for name, errs in mix['sw1'].items():
    src, var = name.split('/')
    lines.append(f'| {src} | {var} | ' + ' | '.join(f'{e:.4f}' for e in errs)
                 + ' |')
  lines += ['', f'Data-vs-data floor: {mix["floor"]:.4f} '
            f'({mix["n"]} samples).', '']
  if 'digits' in results:
    dg = results['digits']
    lines += ['### Digits (64-D): digits-FID / precision / recall, '
              'ancestral sampling', '', '| variance | ' + ' | '.join(
                  f'NFE {n}' for n in dg['nfe']) + ' |',
              '|---|' + '---|' * len(dg['nfe'])]
    for name, ms in dg['metrics'].items():
      lines.append(f'| {name} | ' + ' | '.join(
          f'{m["fid"]:.2f} ± {m["fid_std"]:.2f} / {m["precision"]:.2f} / '
          f'{m["recall"]:.2f}' for m in ms) + ' |')
    lines += ['', f'digits-FID floor (train vs test): '
              f'{dg["floor_fid_train_vs_test"]:.2f}; {dg["num_samples"]} '
              f'samples per entry; means (± sd of FID) over {dg["seeds"]} '
              'sampling seeds, the same seeds for every variance.']
  return '\n'.join(lines) + '\n'


def _panel(draw, box, series, *, xs, ylabel, title, floor=None):
  """A log-log panel: `series` {name: ys} against xs inside box (PIL)."""
  left, top, right, bottom = box
  vals = [y for ys in series.values() for y in ys if np.isfinite(y) and y > 0]
  if floor:
    vals.append(floor)
  lo, hi = min(vals) / 1.3, max(vals) * 1.3
  fx = lambda v: left + (np.log(v) - np.log(xs[0])) / (
      np.log(xs[-1]) - np.log(xs[0])) * (right - left)
  fy = lambda v: top + (np.log(hi) - np.log(np.clip(v, lo, hi))) / (
      np.log(hi) - np.log(lo)) * (bottom - top)
  draw.rectangle([left, top, right, bottom], outline='black')
  for v in np.geomspace(lo, hi, 5):
    draw.line([left - 4, fy(v), left, fy(v)], fill='black')
    draw.text((left - 52, fy(v) - 6), f'{v:.3g}', fill='black')
  for v in xs:
    draw.line([fx(v), bottom, fx(v), bottom + 4], fill='black')
    draw.text((fx(v) - 6, bottom + 8), str(v), fill='black')
  draw.text(((left + right) // 2 - 60, bottom + 24),
            'NFE (ancestral steps)', fill='black')
  draw.text((left, top - 30), f'{title}: {ylabel}', fill='black')
  colours = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd',
             '#8c564b', '#e377c2', '#17becf']
  if floor:
    draw.line([left, fy(floor), right, fy(floor)], fill='#999999')
    draw.text((right - 90, fy(floor) - 14), 'data floor', fill='#999999')
  for k, (name, ys) in enumerate(series.items()):
    colour = colours[k % len(colours)]
    pts = [(fx(a), fy(b)) for a, b in zip(xs, ys) if np.isfinite(b)]
    if len(pts) > 1:
      draw.line(pts, fill=colour, width=2)
    for px, py in pts:
      draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
    draw.text((right + 10, top + 14 * k), name, fill=colour)


def plot(results, filename):
  """Error against NFE, log-log (PIL only: no plotting dependency)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from PIL import ImageDraw  # pylint: disable=g-import-not-at-top

  panels = [('mixture', 'sliced W1 to data')]
  if 'digits' in results:
    panels.append(('digits', 'digits-FID'))
  w = 560
  img = Image.new('RGB', (w * len(panels), 420), 'white')
  draw = ImageDraw.Draw(img)
  for p, (part, ylabel) in enumerate(panels):
    r = results[part]
    if part == 'mixture':
      series, floor = r['sw1'], r['floor']
    else:
      series = {k: [m['fid'] for m in v] for k, v in r['metrics'].items()}
      floor = r['floor_fid_train_vs_test']
    _panel(draw, (p * w + 70, 50, p * w + w - 150, 360), series,
           xs=r['nfe'], ylabel=ylabel, title=part, floor=floor)
  img.save(filename)


def main(argv=None):
  parser = argparse.ArgumentParser(
      prog='python -m experiments.learned_variance')
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--mixture_steps', type=int, default=3000)
  parser.add_argument('--digits_steps', type=int, default=4000)
  parser.add_argument('--digits_seeds', type=int, default=3)
  parser.add_argument('--skip_digits', action='store_true')
  args = parser.parse_args(argv)
  os.makedirs(args.workdir, exist_ok=True)
  t0 = time.time()
  log = functools.partial(print, flush=True)
  results = dict(mixture=mixture_part(train_steps=args.mixture_steps,
                                      log=log))
  if not args.skip_digits:
    results['digits'] = digits_part(train_steps=args.digits_steps,
                                    seeds=args.digits_seeds, log=log)
  results['wall_time_s'] = round(time.time() - t0, 1)
  with open(os.path.join(args.workdir, 'results.json'), 'w') as f:
    json.dump(results, f, indent=1)
  table = markdown(results)
  with open(os.path.join(args.workdir, 'results.md'), 'w') as f:
    f.write(table)
  plot(results, os.path.join(args.workdir, 'error_vs_steps.png'))
  print(table)
  print(f'wall time {results["wall_time_s"]} s')


if __name__ == '__main__':
  main()
