"""Sampler convergence and PF-ODE likelihood accuracy against exact scores.

  python -m experiments.sampler_convergence --workdir=/tmp/sc

1. Deterministic solvers (Euler, Heun, RK4, DDIM eta = 0, DPM-Solver++ 2M/3M,
   EDM's Heun, adaptive Dormand-Prince) on a single Gaussian N(m, s^2 I),
   where the PF-ODE flow map is closed form: (x_t - alpha m) /
   sqrt(alpha^2 s^2 + sigma^2) is constant along trajectories. Error = mean
   |x_num - x_exact| at t_min for the same x_{t_max}; order = minus the
   least-squares slope of log error against log NFE.
2. Stochastic samplers (DDPM, Euler-Maruyama, predictor-corrector, EDM with
   churn, DDBM's bridge sampler) on a 2-D four-component mixture: error =
   sliced Wasserstein-1 distance to fresh data, started from the exact
   marginal at t_max; the noise floor (the same distance between two data
   samples of that size) is printed, and the order is fitted on the points
   above twice the floor (so it is the weak order of the early, biased
   points; below the floor the distance is sampling noise).
   ODE errors below 1e-6 are float32 round-off and excluded from the fit.
3. PF-ODE log-likelihood with the exact score and exact divergence against
   the mixture's exact log-density on 2-D and 8-D mixtures (nats / dim).
4. Samplers per NFE (issue 15): on an 8-D, 4-component full-covariance
   mixture with the DDPM linear schedule and eps prediction, the pathwise
   error (RMS distance sqrt(mean |x - x*|^2) to the converged PF-ODE
   solution x* from the same 1000 initial noises, `samplers.convergence`)
   of each solver / grid at 10, 20 and 50 NFE (denoiser calls). Every grid
   ends at data (t = 0), as diffusers' final_sigmas_type='zero': the last
   step needs no evaluation there. diffusers' UniPC (bh2, order 2, its
   'linspace' timesteps) was measured at 0.39 / 0.13 / 0.017 on such a
   mixture; 'unipc_bh2_2/diffusers_linspace' is that scheduler here.

Writes DIR/results.json: {"samplers": {name: {"nfe", "error", "order"}},
"nll_error_nats_per_dim": {case: float}, "nfe_table": {"<sampler>/<grid>":
{"nfe": [10, 20, 50], "path_rmse": [...]}}}, DIR/nfe_table.png (error
against NFE, log-log) and prints the tables in Markdown. `--parts` runs a
subset (e.g. --parts=nfe).
"""

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from visgen import samplers
from visgen.groundtruth import GaussianMixture
from visgen.groundtruth import exact_marginal_sample
from visgen.groundtruth import fit_order
from visgen.groundtruth import gaussian_flow_map
from visgen.groundtruth import make_mixture
from visgen.groundtruth import sliced_wasserstein
from visgen.interpolants import get_path
from visgen.samplers import convergence
from visgen.samplers import likelihood

# (result name, sampler, path, prediction, grid, steps, options)
_STEPS = (8, 16, 32, 64)
ODE_CASES = (
    ('euler_vp', 'euler', 'vp', 'eps', 'logsnr', _STEPS, {}),
    ('heun_vp', 'heun', 'vp', 'eps', 'logsnr', _STEPS, {}),
    ('rk4_vp', 'rk4', 'vp', 'eps', 'logsnr', (4, 8, 16, 32), {}),
    ('ddim_eta0_vp', 'ddim', 'vp', 'eps', 'logsnr', _STEPS, {}),
    ('dpm_solver_2m_vp', 'dpm_solver_2m', 'vp', 'eps', 'logsnr', _STEPS, {}),
    ('dpm_solver_3m_vp', 'dpm_solver_3m', 'vp', 'eps', 'logsnr', _STEPS, {}),
    ('edm_heun_edm', 'edm', 'edm', 'x0', 'karras', _STEPS, {}),
    ('euler_linear', 'euler', 'linear', 'velocity', 'uniform', _STEPS, {}),
    ('heun_linear', 'heun', 'linear', 'velocity', 'uniform', _STEPS, {}),
    ('rk4_linear', 'rk4', 'linear', 'velocity', 'uniform', (1, 2, 4, 8), {}),
    ('dpm_solver_3m_linear', 'dpm_solver_3m', 'linear', 'velocity',
     'logsnr', _STEPS, {}),
)
_SDE_STEPS = (10, 20, 40, 80, 160)
SDE_CASES = (
    ('ddpm_vp', 'ddpm', 'vp', 'eps', 'uniform', _SDE_STEPS, {}),
    ('euler_maruyama_vp', 'euler_maruyama', 'vp', 'eps', 'uniform',
     _SDE_STEPS, {}),
    ('euler_maruyama_sigma_linear', 'euler_maruyama', 'linear', 'velocity',
     'uniform', _SDE_STEPS, dict(diffusion='sigma')),
    ('pc_ve', 'pc', 've', 'score', 'uniform', _SDE_STEPS,
     dict(predictor='reverse_diffusion')),
    ('edm_churn_edm', 'edm', 'edm', 'x0', 'karras', (5, 10, 20, 40, 80),
     dict(S_churn=10.0)),
    ('bridge_heun_bridge_ve', 'bridge_heun', 'bridge_ve', 'x0', 'karras',
     (5, 10, 20, 40, 80), {}),
)


def run_ode_orders(*, dim=2, n=256):
  mean = jnp.linspace(1.0, -0.5, dim)[None]
  std = 0.5
  gauss = GaussianMixture(jnp.ones(1), mean, std**2 * jnp.eye(dim)[None])
  out = {}
  for key, name, path_name, kind, grid, steps_list, opts in ODE_CASES:
    path = get_path(path_name)
    fn = gauss.denoiser(path=path, kind=kind)
    x_init = path.prior_std() * jax.random.normal(jax.random.PRNGKey(0),
                                                  (n, dim))
    nfes, errs = [], []
    for steps in steps_list:
      ts = samplers.make_grid(grid, steps, path=path)
      x, info = jax.jit(lambda ts, x0, fn=fn, path=path, kind=kind, name=name,
                        opts=opts:
                        samplers.sample(name, fn, path=path, prediction=kind,
                                        ts=ts, x_init=x0, return_info=True,
                                        key=jax.random.PRNGKey(1), **opts))(
                                            ts, x_init)
      ref = gaussian_flow_map(x_init, path=path, mean=mean, std=std,
                              t_from=ts[0], t_to=ts[-1])
      nfes.append(int(info['nfe']))
      errs.append(float(jnp.mean(jnp.linalg.norm(x - ref, axis=-1))))
    out[key] = dict(nfe=nfes, error=errs, order=fit_order(nfes, errs, 1e-6))
  # Adaptive Dormand-Prince: tolerance sweep.
  path = get_path('vp')
  fn = gauss.denoiser(path=path, kind='eps')
  x_init = jax.random.normal(jax.random.PRNGKey(0), (n, dim))
  ts = samplers.make_grid('uniform', 1, path=path)
  run = jax.jit(lambda tol: samplers.sample(
      'dopri5', fn, path=path, prediction='eps', ts=ts, x_init=x_init,
      rtol=tol, atol=tol, return_info=True))
  nfes, errs = [], []
  for tol in (1e-2, 1e-3, 1e-4, 1e-5):
    x, info = run(jnp.float32(tol))
    ref = gaussian_flow_map(x_init, path=path, mean=mean, std=std,
                            t_from=ts[0], t_to=ts[-1])
    nfes.append(int(info['nfe']))
    errs.append(float(jnp.mean(jnp.linalg.norm(x - ref, axis=-1))))
  out['dopri5_vp'] = dict(nfe=nfes, error=errs,
                          order=fit_order(nfes, errs, 1e-6))
  return out


def run_sde_errors(*, n=2000):
  gmm = make_mixture(jax.random.PRNGKey(0), dim=2, num_components=4)
  ref, _ = gmm.sample(jax.random.PRNGKey(1), 20 * n)
  floors = [float(sliced_wasserstein(
      gmm.sample(jax.random.PRNGKey(100 + i), n)[0], ref)) for i in range(20)]
  floor = float(np.mean(floors))
  out = {}
  for key, name, path_name, kind, grid, steps_list, opts in SDE_CASES:
    path = get_path(path_name)
    fn = gmm.denoiser(path=path, kind=kind)
    y = (jax.random.normal(jax.random.PRNGKey(9), (n, 2)) if path.is_bridge
         else None)
    x_init = exact_marginal_sample(gmm, path, jax.random.PRNGKey(2), n, y=y)
    nfes, errs = [], []
    for steps in steps_list:
      ts = samplers.make_grid(grid, steps, path=path)
      x, info = jax.jit(lambda ts, key, fn=fn, path=path, kind=kind,
                        name=name, opts=opts, x_init=x_init, y=y:
                        samplers.sample(name, fn, path=path, prediction=kind,
                                        ts=ts, x_init=x_init, key=key, y=y,
                                        denoise_final=True, return_info=True,
                                        **opts))(ts, jax.random.PRNGKey(3))
      nfes.append(int(info['nfe']))
      errs.append(float(sliced_wasserstein(x, ref)))
    out[key] = dict(nfe=nfes, error=errs,
                    order=fit_order(nfes, errs, 2 * floor))
  return out, floor


def run_nll(*, n=256):
  out = {}
  for dim in (2, 8):
    gmm = make_mixture(jax.random.PRNGKey(dim), dim=dim, num_components=4)
    x, _ = gmm.sample(jax.random.PRNGKey(1), n)
    for path_name, kind in (('vp', 'eps'), ('linear', 'velocity')):
      path = get_path(path_name)
      fn = gmm.denoiser(path=path, kind=kind)
      exact = gmm.log_prob_t(x, jnp.full((n,), path.t_min), path=path)
      logp, _ = jax.jit(lambda x, fn=fn, path=path, kind=kind:
                        likelihood.ode_log_likelihood(
                            fn, x, path=path, prediction=kind, method='rk4',
                            num_steps=50, grid='logsnr'))(x)
      out[f'{path_name}_{dim}d_exact_div_rk4_50'] = float(
          jnp.mean(jnp.abs(logp - exact)) / dim)
  return out


# (table key, sampler, options, grid, grid options). Grids end at data.
_DATA = dict(t_min=0.0)
NFE_CASES = (
    ('unipc_bh2_2/diffusers_linspace', 'unipc', dict(order=2),
     'diffusers_linspace', {}),
    ('unipc_bh1_2/diffusers_linspace', 'unipc', dict(order=2, variant='bh1'),
     'diffusers_linspace', {}),
    ('dpm_solver_2m/diffusers_linspace', 'dpm_solver_2m', {},
     'diffusers_linspace', {}),
    ('dpm_solver_3m/diffusers_linspace', 'dpm_solver_3m', {},
     'diffusers_linspace', {}),
    ('ipndm/diffusers_linspace', 'ipndm', {}, 'diffusers_linspace', {}),
    ('unipc_bh2_2/logsnr_data', 'unipc', dict(order=2), 'logsnr_data', {}),
    ('unipc_bh2_3/logsnr_data', 'unipc', dict(order=3), 'logsnr_data', {}),
    ('unipc_bh1_3/logsnr_data', 'unipc', dict(order=3, variant='bh1'),
     'logsnr_data', {}),
    ('unipc_bh2_3_no_corrector/logsnr_data', 'unipc',
     dict(order=3, corrector=False), 'logsnr_data', {}),
    ('dpm_solver_2m/logsnr_data', 'dpm_solver_2m', {}, 'logsnr_data', {}),
    ('dpm_solver_3m/logsnr_data', 'dpm_solver_3m', {}, 'logsnr_data', {}),
    ('ipndm/logsnr_data', 'ipndm', {}, 'logsnr_data', {}),
    ('unipc_bh2_3/logsnr', 'unipc', dict(order=3), 'logsnr', _DATA),
    ('unipc_bh2_3/quadratic', 'unipc', dict(order=3), 'quadratic', _DATA),
    ('unipc_bh2_3/karras', 'unipc', dict(order=3), 'karras', _DATA),
    ('dpm_solver_3m/quadratic', 'dpm_solver_3m', {}, 'quadratic', _DATA),
    # Tuned to this mixture (its means are ~2 apart: nothing happens above
    # s = 20), reported, not the default.
    ('unipc_bh2_3/logsnr_data_smax20', 'unipc', dict(order=3),
     'logsnr_data', dict(sigma_max=20.0)),
)
NFES = (10, 20, 50)
DIFFUSERS_UNIPC = (0.39, 0.13, 0.017)  # issue 15, diffusers 0.42.1


def run_nfe_table(*, n=1000, reference_steps=2000):
  """Pathwise error per NFE of the few-step solvers (part 4)."""
  gmm = make_mixture(jax.random.PRNGKey(0), dim=8, num_components=4)
  path = get_path('ddpm_linear')
  fn = gmm.denoiser(path=path, kind='eps')
  x_init = jax.random.normal(jax.random.PRNGKey(1), (n, 8))
  ref = convergence.pf_reference(fn, path=path, prediction='eps',
                                 x_init=x_init, num_steps=reference_steps)
  half = convergence.pf_reference(fn, path=path, prediction='eps',
                                  x_init=x_init,
                                  num_steps=reference_steps // 2)
  table = {}
  for key, name, opts, grid, grid_kw in NFE_CASES:
    run = jax.jit(lambda ts, name=name, opts=opts: samplers.sample(
        name, fn, path=path, prediction='eps', ts=ts, x_init=x_init,
        return_info=True, **opts))
    nfes, errs = [], []
    for steps in NFES:
      ts = samplers.make_grid(grid, steps, path=path, **grid_kw)
      x, info = run(ts)
      nfes.append(int(info['nfe']))
      errs.append(convergence.path_rmse(x, ref))
    table[key] = dict(nfe=nfes, path_rmse=errs)
  return table, convergence.path_rmse(half, ref)


def _plot_nfe(table, filename):
  """Log-log error against NFE (PIL only: no plotting dependency)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from PIL import ImageDraw  # pylint: disable=import-outside-toplevel
  width, height, left, right, top, bottom = 900, 560, 70, 330, 20, 50
  img = Image.new('RGB', (width, height), 'white')
  draw = ImageDraw.Draw(img)
  lo, hi = 1e-3, 2.0
  fx = lambda v: left + (np.log(v) - np.log(8)) / (np.log(64) - np.log(8)) * (
      width - left - right)
  fy = lambda v: top + (np.log(hi) - np.log(np.clip(v, lo, hi))) / (
      np.log(hi) - np.log(lo)) * (height - top - bottom)
  draw.rectangle([left, top, width - right, height - bottom], outline='black')
  for v in (1e-3, 1e-2, 1e-1, 1.0):
    draw.line([left - 4, fy(v), left, fy(v)], fill='black')
    draw.text((8, fy(v) - 6), f'{v:g}', fill='black')
  for v in NFES:
    draw.line([fx(v), height - bottom, fx(v), height - bottom + 4],
              fill='black')
    draw.text((fx(v) - 6, height - bottom + 8), str(v), fill='black')
  draw.text((left + 200, height - 20), 'NFE', fill='black')
  draw.text((8, top - 14), 'path RMSE', fill='black')
  series = dict(table)
  series['diffusers UniPC (issue 15)'] = dict(nfe=list(NFES),
                                              path_rmse=list(DIFFUSERS_UNIPC))
  colours = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd',
             '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf']
  for k, (key, r) in enumerate(series.items()):
    colour = 'black' if key.startswith('diffusers') else colours[
        k % len(colours)]
    pts = [(fx(a), fy(b)) for a, b in zip(r['nfe'], r['path_rmse'])]
    draw.line(pts, fill=colour, width=3 if colour == 'black' else 2)
    for px, py in pts:
      draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
    draw.text((width - right + 10, top + 14 * k), key, fill=colour)
  img.save(filename)


def _nfe_markdown(table, converged):
  lines = ['| sampler/grid | ' + ' | '.join(f'NFE {k}' for k in NFES) + ' |',
           '|---|' + '---|' * len(NFES),
           '| diffusers UniPC (issue 15) | ' + ' | '.join(
               f'{e:.3g}' for e in DIFFUSERS_UNIPC) + ' |']
  for key, r in table.items():
    lines.append(f'| {key} | ' + ' | '.join(
        f"{e:.3g}" for e in r['path_rmse']) + ' |')
  lines.append(f'\nReference converged to {converged:.1e} (half the steps).')
  return '\n'.join(lines)


def _markdown(samplers_out, nll, floor):
  lines = ['| sampler_path | NFE | error | order |', '|---|---|---|---|']
  for name, r in samplers_out.items():
    nfe = ', '.join(str(k) for k in r['nfe'])
    err = ', '.join(f'{e:.2e}' for e in r['error'])
    lines.append(f"| {name} | {nfe} | {err} | {r['order']:.2f} |")
  lines += ['', f'SW-1 noise floor (two data samples of the stochastic '
            f'size): {floor:.4f}', '',
            '| NLL case | mean abs error (nats/dim) |', '|---|---|']
  lines += [f'| {k} | {v:.2e} |' for k, v in nll.items()]
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--parts', default='orders,sde,nll,nfe',
                      help='comma-separated subset of orders,sde,nll,nfe')
  args = parser.parse_args(argv)
  parts = set(args.parts.split(','))
  unknown = parts - {'orders', 'sde', 'nll', 'nfe'}
  if unknown:
    parser.error(f'unknown --parts {sorted(unknown)}; choose from orders, '
                 'sde, nll, nfe')
  os.makedirs(args.workdir, exist_ok=True)
  start = time.time()
  results, nll, floor, payload = {}, {}, float('nan'), {}
  if 'orders' in parts:
    results.update(run_ode_orders())
  if 'sde' in parts:
    sde, floor = run_sde_errors()
    results.update(sde)
  if 'nll' in parts:
    nll = run_nll()
  if results or nll:
    payload.update({'samplers': results, 'nll_error_nats_per_dim': nll})
    print(_markdown(results, nll, floor))
  if 'nfe' in parts:
    table, converged = run_nfe_table()
    payload['nfe_table'] = table
    payload['nfe_reference_convergence'] = converged
    _plot_nfe(table, os.path.join(args.workdir, 'nfe_table.png'))
    print(_nfe_markdown(table, converged))
  with open(os.path.join(args.workdir, 'results.json'), 'w') as f:
    json.dump(payload, f, indent=2)
  print(f'\n(wall time {time.time() - start:.0f} s; results in '
        f"{os.path.join(args.workdir, 'results.json')})")


if __name__ == '__main__':
  main()
