r"""Inverse problems with a diffusion prior: DDRM, DPS and Pi-GDM, checked
against exact posteriors and scored on restorations.

  python -m experiments.inverse_problems --workdir=DIR [--gen_workdir=G]

1. Gaussian mixture (exact). The 8-D, 4-component, full-covariance mixture
   of the sampler tests (`make_mixture(PRNGKey(0), dim=8)`) is the prior,
   with its closed-form denoiser on the DDPM-linear path; the observation is
   y = H x* + sigma_y n (sigma_y = 0.1, x* a prior draw) for the vector
   analogues of the image operators: denoising (H = I), inpainting (drop the
   odd coordinates) and super-resolution (average pairs of coordinates).
   The posterior p(x | y) is a closed-form mixture
   (`visgen.inverse.exact`). For each operator and several observations
   each method draws N samples for the same y; reported: the sliced
   Wasserstein-1 distance to M exact posterior samples (`sw_to_exact`), the
   error of the sample mean against the exact posterior mean
   (`mean_error`), and the floor: the same distance for N independent
   exact posterior samples (`sw_floor`). Each method's settings are swept
   (DDRM: NFE x eta; DPS and Pi-GDM: NFE x scale, ancestral sampler) and the
   best by SW is reported with its NFE; the whole sweep is in
   results.json['gmm_sweep'] and the plot (SW / floor against NFE).
2. Images. A trained digits generator (the quickstart: class-conditional
   flow-matching MLP on 8x8 digits, used unconditionally through its null
   class) restores the digits test split under denoising, inpainting
   (random pixels, a box), super-resolution (average pooling x2 / x4,
   bicubic x2) and deblurring (Gaussian, uniform), sigma_y = 0.1 on
   [-1, 1] pixels. Reported: PSNR against the clean images, FID of the
   restorations against the clean test images in the digits feature net's
   space (visgen.evaluators.feature_nets 'digits', not Inception), NFE; the
   observation's own pseudo-inverse H^+ y is the baseline row.
   Colourisation needs RGB images: tested in tests/test_inverse.py only.

Writes DIR/results.json, DIR/sw_vs_nfe.png, DIR/restorations.png; prints
Markdown tables. `--gen_workdir` reuses a trained quickstart workdir
(otherwise one is trained in DIR/generator, ~10 min on 2 cores).
"""

import argparse
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from visgen import samplers
from visgen.groundtruth import make_mixture
from visgen.groundtruth import sliced_wasserstein
from visgen.interpolants import get_path
from visgen.inverse import ddrm
from visgen.inverse import dps
from visgen.inverse import exact
from visgen.inverse import operators as ops_lib
from visgen.inverse import pigdm

ROOT = os.path.join(os.path.dirname(__file__), '..')
METHODS = ('ddrm', 'dps', 'pigdm')


# ---------------------------------------------------------------------------
# Part 1: the Gaussian mixture.
# ---------------------------------------------------------------------------
def gmm_operators(dim=8):
  xs = (dim, 1, 1)
  return {
      'denoise': ops_lib.Identity(xs),
      'inpaint': ops_lib.Inpainting(
          xs, (np.arange(dim) % 2 == 0)[:, None, None]),
      'sr': ops_lib.AveragePool(xs, (2, 1)),
  }


def gmm_setup(dim=8):
  gmm = make_mixture(jax.random.PRNGKey(0), dim=dim)
  path = get_path('ddpm_linear')
  fn = gmm.denoiser(path=path, kind='eps')
  den = lambda x, t, c=None: fn(x.reshape(x.shape[0], -1), t, c).reshape(
      x.shape)
  w, mu, cov = (np.asarray(a, np.float64) for a in (gmm.weights, gmm.means,
                                                    gmm.covs))
  return gmm, path, den, (w / w.sum(), mu, cov)


def make_solver(method, den, op, path):
  """jit(y, key, ts, a, b) -> samples (B, D) for one method and operator;
  a, b: DDRM's (eta, eta_b), DPS's / Pi-GDM's (scale, data_var)."""

  @jax.jit
  def run(y, key, ts, a, b, sigma_y):
    n = y.shape[0]
    if method == 'ddrm':
      x, _ = ddrm(den, op, y, path=path, prediction='eps', ts=ts, key=key,
                  sigma_y=sigma_y, eta=a, eta_b=b)
    else:
      if method == 'dps':
        guided = dps(den, op, y, scale=a, path=path, prediction='eps',
                     form='gaussian', sigma_y=sigma_y)
      else:
        guided = pigdm(den, op, y, path=path, prediction='eps',
                       sigma_y=sigma_y, scale=a, data_var=b)
      x = samplers.sample('ddpm', guided, path=path, prediction='eps',
                          ts=ts, key=key, shape=(n,) + op.x_shape,
                          denoise_final=True)
    return x.reshape(n, -1)

  return run


def gmm_sweep(*, num_y, n, m, sigma_y, nfes, etas, dps_scales, pigdm_scales,
              methods=METHODS, seed=0, log=print, done=None,
              on_operator=None):
  """The sweep; `done` (rows of an earlier run with the same settings)
  skips the operators it covers, `on_operator(summary, sweep)` is called
  after each operator (results are saved as they come)."""
  gmm, path, den, (w, mu, cov) = gmm_setup()
  prior = exact.MixturePosterior(w, mu, cov)
  data_var = float(np.mean(np.diag(
      np.einsum('k,kij->ij', w, cov) + np.einsum('k,ki,kj->ij', w, mu, mu)
      - np.outer(w @ mu, w @ mu))))
  sweep, summary = [], {}
  done = list(done or [])
  for k, (op_name, op) in enumerate(gmm_operators().items()):
    # One generator per operator: a resumed run draws the same y's.
    rng = np.random.default_rng([seed, k])
    old = [r for r in done if r['operator'] == op_name]
    if old:
      sweep += old
      for method in methods:
        summary.setdefault(op_name, {})[method] = _best(old, op_name, method)
      log(f'[gmm {op_name}] reused from the earlier run')
      continue
    h = ops_lib.dense(op, 'H')
    cases = []
    for j in range(num_y):
      x_star = prior.sample(rng, 1)[0]
      y = h @ x_star + sigma_y * rng.standard_normal(h.shape[0])
      post = exact.linear_gaussian_posterior(w, mu, cov, h, y, sigma_y)
      ref = jnp.asarray(post.sample(rng, m), jnp.float32)
      ex = post.sample(rng, n)
      floor = float(sliced_wasserstein(jnp.asarray(ex, jnp.float32), ref,
                                       num_projections=128))
      floor_mean = float(np.linalg.norm(ex.mean(0) - post.mean()))
      yb = jnp.broadcast_to(jnp.asarray(y, jnp.float32).reshape(
          (1,) + op.y_shape), (n,) + op.y_shape)
      cases.append(dict(y=yb, ref=ref, mean=post.mean(), floor=floor,
                        floor_mean=floor_mean, weights=post.weights))
    sw_floor = float(np.mean([c['floor'] for c in cases]))
    log(f'[gmm {op_name}] sw_floor {sw_floor:.4f}  posterior weights '
        f'{[np.round(c["weights"], 3).tolist() for c in cases]}')
    for method in methods:
      run = make_solver(method, den, op, path)
      params = dict(ddrm=[(e, 1.0) for e in etas],
                    dps=[(s, 0.0) for s in dps_scales],
                    pigdm=[(s, data_var) for s in pigdm_scales])[method]
      for nfe in nfes:
        # DDRM evaluates at every grid time (the last step goes to sigma =
        # 0); the samplers take steps on the grid plus a final denoising.
        ts = samplers.make_grid('uniform', nfe - 1, path=path)
        for a, b in params:
          t0 = time.time()
          sws, mes = [], []
          for j, c in enumerate(cases):
            x = run(c['y'], jax.random.key(100 + j), ts, a, b, sigma_y)
            x = jnp.where(jnp.isfinite(x), x, 1e6)
            sws.append(float(sliced_wasserstein(x, c['ref'],
                                                num_projections=128)))
            mes.append(float(np.linalg.norm(np.asarray(x, np.float64).mean(0)
                                            - c['mean'])))
          row = dict(operator=op_name, method=method, nfe=int(nfe),
                     param=float(a), sw_to_exact=float(np.mean(sws)),
                     mean_error=float(np.mean(mes)), sw_floor=sw_floor,
                     mean_error_floor=float(np.mean(
                         [c['floor_mean'] for c in cases])))
          row['ratio'] = row['sw_to_exact'] / sw_floor
          sweep.append(row)
          log(f'  {method:5s} nfe {nfe:4d} '
              f'{"eta" if method == "ddrm" else "scale"} {a:<5g} sw '
              f'{row["sw_to_exact"]:.4f} ({row["ratio"]:.2f}x floor)  mean '
              f'err {row["mean_error"]:.4f}  ({time.time() - t0:.1f} s)')
      summary.setdefault(op_name, {})[method] = _best(sweep, op_name,
                                                      method)
    if on_operator:
      on_operator(summary, sweep)
  setup = dict(mixture='make_mixture(PRNGKey(0), dim=8): 4 components, '
               'full covariance', path='ddpm_linear', denoiser='exact eps',
               sigma_y=sigma_y, num_observations=num_y, n=n, m=m,
               sw='sliced W1, 128 projections, averaged over observations',
               dps='score form, gaussian likelihood, ddpm ancestral + final '
               'denoise', pigdm=f'ddpm ancestral + final denoise, data_var='
               f'{data_var:.3f}', ddrm='eta_b = 1, uniform grid',
               operators=dict(denoise='H = I', inpaint='keep coordinates 0, '
                              '2, 4, 6', sr='average coordinate pairs'))
  return summary, sweep, setup


def _best(rows, op_name, method):
  best = min((r for r in rows if r['operator'] == op_name
              and r['method'] == method), key=lambda r: r['sw_to_exact'])
  return dict(sw_to_exact=best['sw_to_exact'], mean_error=best['mean_error'],
              sw_floor=best['sw_floor'],
              mean_error_floor=best['mean_error_floor'], nfe=best['nfe'],
              ratio=best['ratio'],
              **({'eta': best['param'], 'eta_b': 1.0} if method == 'ddrm'
                 else {'scale': best['param']}))


def gmm_markdown(summary):
  lines = ['| operator | method | NFE | setting | SW to exact | SW floor | '
           'SW / floor | mean error |', '|' + '---|' * 8]
  for op_name, rows in summary.items():
    for method, r in rows.items():
      setting = (f"eta {r['eta']:g}, eta_b 1" if method == 'ddrm'
                 else f"scale {r['scale']:g}")
      lines.append(f"| {op_name} | {method} | {r['nfe']} | {setting} | "
                   f"{r['sw_to_exact']:.4f} | {r['sw_floor']:.4f} | "
                   f"{r['ratio']:.2f} | {r['mean_error']:.4f} |")
  return '\n'.join(lines)


def plot_sweep(sweep, path_png):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  op_names = list(dict.fromkeys(r['operator'] for r in sweep))
  fig, axes = plt.subplots(1, len(op_names), figsize=(4.2 * len(op_names),
                                                      3.4), squeeze=False)
  for ax, op_name in zip(axes[0], op_names):
    for method in METHODS:
      rows = [r for r in sweep if r['operator'] == op_name
              and r['method'] == method]
      if not rows:
        continue
      nfes = sorted({r['nfe'] for r in rows})
      best = [min(r['ratio'] for r in rows if r['nfe'] == k) for k in nfes]
      ax.plot(nfes, best, 'o-', label=method)
    ax.axhline(1.0, color='k', lw=0.8, ls=':', label='floor')
    ax.axhline(2.0, color='r', lw=0.8, ls='--', label='2x floor')
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('NFE')
    ax.set_title(f'GMM 8-D: {op_name}')
  axes[0][0].set_ylabel('sliced W1 to exact posterior / floor\n(best '
                        'setting per NFE)')
  axes[0][-1].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path_png, dpi=110)
  plt.close(fig)


# ---------------------------------------------------------------------------
# Part 2: digits restorations with the trained generator.
# ---------------------------------------------------------------------------
def image_operators(x_shape):
  h = x_shape[0]
  return {
      'denoise': ops_lib.build('denoise', x_shape),
      'inpaint_random': ops_lib.build('inpaint_random', x_shape, missing=0.5,
                                      seed=0),
      'inpaint_box': ops_lib.build('inpaint_box', x_shape, top=h // 4,
                                   left=h // 4, height=h // 2,
                                   width=h // 2),
      'sr_pool_x2': ops_lib.build('sr_pool', x_shape, factor=2),
      'sr_pool_x4': ops_lib.build('sr_pool', x_shape, factor=4),
      'sr_bicubic_x2': ops_lib.build('sr_bicubic', x_shape, factor=2),
      'deblur_gaussian': ops_lib.build('deblur_gaussian', x_shape, std=1.0),
      'deblur_uniform': ops_lib.build('deblur_uniform', x_shape, size=3),
  }


def load_generator(gen_workdir, *, train_steps=3000, runlocal=False):
  from visgen import config_loader  # pylint: disable=g-import-not-at-top
  from visgen.classification import guided_sampling  # pylint: disable=g-import-not-at-top
  cfg_path = os.path.join(ROOT, 'configs/quickstart.py') + (
      ':runlocal' if runlocal else '')
  c = config_loader.load(cfg_path)
  c.total_steps = train_steps
  c.eval = {}
  if runlocal:
    c.num_grid_samples = 0
  return guided_sampling.load_trained(c, gen_workdir, train_if_needed=True)


def psnr(x, ref):
  """Per-image PSNR (dB) on [-1, 1] images (peak-to-peak 2), averaged."""
  mse = np.mean((np.clip(x, -1, 1) - ref) ** 2, axis=(1, 2, 3))
  return float(np.mean(10 * np.log10(4.0 / np.maximum(mse, 1e-10))))


def image_part(gen, *, sigma_y, nfe, dps_scales, pigdm_scales, num_images,
               log=print, out_png=None):
  from visgen.data import preprocess  # pylint: disable=g-import-not-at-top
  from visgen.evaluators import datasets  # pylint: disable=g-import-not-at-top
  from visgen.evaluators import feature_nets  # pylint: disable=g-import-not-at-top
  from visgen.evaluators import frechet  # pylint: disable=g-import-not-at-top
  from visgen.inverse import reshaped  # pylint: disable=g-import-not-at-top
  task = gen.task
  x_shape = tuple(task.x_shape)
  model_shape = (int(np.prod(x_shape)),) if task.flatten else x_shape
  # The flow path (alpha(1) = 0): the grids start at t = 0.995 (sigma~ ~
  # 200), where DDRM's scaling x / alpha is finite.
  path = get_path(task.path.name, t_max=0.995) if task.path.name in (
      'linear', 'gvp') else task.path
  null = task.num_classes  # the null label: the unconditional model

  def make_den(params):
    # The parameters are an argument of the jitted solvers, not closure
    # constants (XLA would constant-fold the network into the program).
    net = task.network(params)

    def den(x, t, cond=None):
      del cond
      c = {'label': jnp.full(x.shape[:1], null, jnp.int32)} if null else {}
      return reshaped(net, model_shape=model_shape, x_shape=x_shape)(x, t, c)

    return den

  test = datasets.load_images('digits', split='test', size=x_shape[0])
  clean_u8 = test['image'][:num_images]
  clean = np.asarray(preprocess.to_float(clean_u8), np.float32)
  fnet = feature_nets.get_feature_net('digits')
  ref_stats = frechet.GaussianStats.from_features(
      fnet(test['image'])['pool'])

  def fid(x):
    u8 = preprocess.to_uint8(np.clip(x, -1, 1))
    st = frechet.GaussianStats.from_features(fnet(u8)['pool'])
    return float(frechet.frechet_distance_stats(st, ref_stats))

  def solver(method, op):
    @jax.jit
    def run_p(params, y, key, ts, a):
      den = make_den(params)
      if method == 'ddrm':
        return ddrm(den, op, y, path=path, prediction=task.prediction,
                    ts=ts, key=key, sigma_y=sigma_y, eta=a, eta_b=1.0)[0]
      if method == 'dps':
        g = dps(den, op, y, scale=a, path=path, prediction=task.prediction,
                form='gaussian', sigma_y=sigma_y)
      else:
        g = pigdm(den, op, y, path=path, prediction=task.prediction,
                  sigma_y=sigma_y, scale=a, data_var=0.5)
      return samplers.sample('ddim', g, path=path,
                             prediction=task.prediction, ts=ts, key=key,
                             shape=y.shape[:1] + x_shape, eta=1.0,
                             denoise_final=True)
    return functools.partial(run_p, gen.params)

  ts = samplers.make_grid('uniform', nfe - 1, path=path)
  results, panels, chosen = {}, [], {}
  clean_fid = fid(clean)
  train = datasets.load_images('digits', split='train', size=x_shape[0])
  tune_x = jnp.asarray(preprocess.to_float(train['image'][:len(clean)]),
                       jnp.float32)
  log(f'[images] {len(clean)} digits test images {x_shape}, sigma_y '
      f'{sigma_y}, NFE {nfe}; FID(clean test subset vs test) = '
      f'{clean_fid:.3f}')
  rng = np.random.default_rng(0)

  def observe(op, x):
    return op.H(x) + sigma_y * jnp.asarray(
        rng.standard_normal((x.shape[0],) + op.y_shape), jnp.float32)

  for op_name, op in image_operators(x_shape).items():
    x = jnp.asarray(clean)
    y = observe(op, x)
    y_tune = observe(op, tune_x)
    rows = {}
    base = np.asarray(op.H_pinv(y))
    rows['pinv'] = dict(psnr=psnr(base, clean), fid=fid(base), nfe=0)
    row_panel = [clean[:8], base[:8]]
    for method in METHODS:
      t0 = time.time()
      fn = solver(method, op)
      # DPS's and Pi-GDM's weights are tuned per operator by PSNR on as
      # many *train* images (DDRM keeps the paper's eta = 0.85, eta_b = 1).
      options = dict(ddrm=(0.85,), dps=dps_scales, pigdm=pigdm_scales)[method]
      scores = {}
      if len(options) > 1:
        for a in options:
          out = np.asarray(fn(y_tune, jax.random.key(2), ts, a))
          scores[a] = psnr(np.where(np.isfinite(out), out, 0.0),
                           np.asarray(tune_x))
      a = max(scores, key=scores.get) if scores else options[0]
      chosen.setdefault(method, {})[op_name] = a
      out = np.asarray(fn(y, jax.random.key(1), ts, a))
      out = np.where(np.isfinite(out), out, 0.0)
      rows[method] = dict(psnr=psnr(out, clean), fid=fid(out), nfe=int(nfe),
                          **({'eta': a} if method == 'ddrm' else
                             {'scale': a}))
      row_panel.append(out[:8])
      log(f'  {op_name:16s} {method:5s} PSNR {rows[method]["psnr"]:6.2f}  '
          f'FID {rows[method]["fid"]:8.3f}  ({"eta" if method == "ddrm" else "scale"} '
          f'{a:g}; tuning PSNR '
          f'{ {k: round(v, 2) for k, v in scores.items()} }; '
          f'{time.time() - t0:.1f} s)')
    log(f'  {op_name:16s} pinv  PSNR {rows["pinv"]["psnr"]:6.2f}  FID '
        f'{rows["pinv"]["fid"]:8.3f}')
    results[op_name] = rows
    panels.append((op_name, row_panel))
  if out_png:
    _save_panels(panels, out_png)
  return results, dict(clean_fid=clean_fid, num_images=len(clean),
                       sigma_y=sigma_y, nfe=nfe, chosen=chosen,
                       dps_scales=list(dps_scales),
                       pigdm_scales=list(pigdm_scales),
                       tuning='per operator, PSNR on as many digits train '
                       'images', ddrm='eta 0.85, eta_b 1 (the paper)',
                       dps='gaussian form', pigdm='data_var 0.5',
                       samplers='dps/pigdm: ddim eta=1 + final denoise',
                       path=f'{path.name}, t_max {path.t_max}')


def _save_panels(panels, path_png):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  cols = ['clean', 'H^+ y', 'DDRM', 'DPS', 'PiGDM']
  fig, axes = plt.subplots(len(panels), len(cols),
                           figsize=(2.2 * len(cols), 0.9 * len(panels)))
  for i, (name, row) in enumerate(panels):
    for j, imgs in enumerate(row):
      strip = np.concatenate([np.clip(im[..., 0], -1, 1) for im in imgs], 1)
      ax = axes[i, j]
      ax.imshow(strip, cmap='gray', vmin=-1, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(cols[j], fontsize=8)
      if j == 0:
        ax.set_ylabel(name, fontsize=6, rotation=0, ha='right')
  fig.tight_layout()
  fig.savefig(path_png, dpi=110)
  plt.close(fig)


def images_markdown(images):
  lines = ['| dataset | operator | method | PSNR (dB) | digits-FID | NFE |',
           '|' + '---|' * 6]
  for ds, ops in images.items():
    for op_name, rows in ops.items():
      for method, r in rows.items():
        lines.append(f"| {ds} | {op_name} | {method} | {r['psnr']:.2f} | "
                     f"{r['fid']:.3f} | {r['nfe']} |")
  return '\n'.join(lines)


# ---------------------------------------------------------------------------
def run(workdir, *, gen_workdir=None, parts=('gmm', 'images'), quick=False,
        sigma_y=0.1, num_y=2, n=1000, m=20000, nfes=(20, 100),
        etas=(0.85, 1.0), dps_scales=(0.3,), pigdm_scales=(1.0,), image_nfe=20, image_sigma_y=0.1,
        image_dps_scales=(0.003, 0.01, 0.03),
        image_pigdm_scales=(1.0,), num_images=200, methods=METHODS):
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  out_path = os.path.join(workdir, 'results.json')
  results = {}
  if os.path.exists(out_path):
    with open(out_path) as f:
      results = json.load(f)
  results.setdefault('gmm', {})
  results.setdefault('images', {})
  wall = results.setdefault('wall_time_s', {})
  if quick:
    num_y, n, m, nfes, etas = 1, 200, 2000, (10,), (0.85,)
    dps_scales, pigdm_scales, image_nfe, num_images = (0.1,), (1.0,), 4, 32
    image_dps_scales, image_pigdm_scales = (0.01,), (1.0,)
  def save():
    with open(out_path + '.tmp', 'w') as f:
      json.dump(results, f, indent=2)
    os.replace(out_path + '.tmp', out_path)

  if 'gmm' in parts:
    t = time.time()
    settings = dict(num_y=num_y, n=n, m=m, sigma_y=sigma_y,
                    nfes=list(nfes), etas=list(etas),
                    dps_scales=list(dps_scales),
                    pigdm_scales=list(pigdm_scales))
    if tuple(methods) != METHODS:  # (the default keeps older settings equal)
      settings['methods'] = list(methods)
    same = results.get('gmm_settings') == settings
    results['gmm_settings'] = settings

    def on_operator(summary, sweep):
      results['gmm'], results['gmm_sweep'] = summary, sweep
      save()

    summary, sweep, setup = gmm_sweep(
        **settings, done=results.get('gmm_sweep') if same else None,
        on_operator=on_operator)
    results['gmm'], results['gmm_sweep'] = summary, sweep
    results['gmm_setup'] = setup
    plot_sweep(sweep, os.path.join(workdir, 'sw_vs_nfe.png'))
    wall['gmm'] = round(time.time() - t, 1)
    save()
  if 'images' in parts:
    t = time.time()
    gen_workdir = gen_workdir or os.path.join(workdir, 'generator')
    gen = load_generator(gen_workdir, train_steps=20 if quick else 3000,
                         runlocal=quick)
    images, img_setup = image_part(
        gen, sigma_y=image_sigma_y, nfe=image_nfe,
        dps_scales=image_dps_scales, pigdm_scales=image_pigdm_scales,
        num_images=num_images,
        out_png=os.path.join(workdir, 'restorations.png'))
    results['images'] = {'digits': images}
    results['images_setup'] = dict(img_setup, generator=gen_workdir,
                                   generator_step=gen.step,
                                   fid_space="digits feature net "
                                   "(visgen.evaluators.feature_nets "
                                   "'digits'), reference: digits test split; "
                                   'not Inception')
    wall['images'] = round(time.time() - t, 1)
  wall['total_last_run'] = round(time.time() - t0, 1)
  save()
  if results['gmm']:
    print(gmm_markdown(results['gmm']))
  if results['images']:
    print()
    print(images_markdown(results['images']))
  print(f'wall time: {wall}')
  return results


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[1])
  parser.add_argument('--workdir', required=True, help='Output directory.')
  parser.add_argument('--gen_workdir', default=None,
                      help='A trained configs/quickstart.py workdir to reuse '
                      '(default: WORKDIR/generator, trained if absent).')
  parser.add_argument('--parts', default='gmm,images',
                      help="Comma list of 'gmm', 'images'.")
  parser.add_argument('--sigma_y', type=float, default=0.1)
  parser.add_argument('--num_samples', type=int, default=1000,
                      help='Posterior samples per method and observation.')
  parser.add_argument('--nfes', default='20,100')
  parser.add_argument('--etas', default='0.85,1',
                      help="DDRM's eta values swept on the mixture.")
  parser.add_argument('--methods', default=','.join(METHODS),
                      help='Comma list of the mixture methods to run '
                      '(ddrm, dps, pigdm).')
  parser.add_argument('--image_nfe', type=int, default=20)
  parser.add_argument('--num_images', type=int, default=200,
                      help='Digits test images restored per operator.')
  parser.add_argument('--quick', action='store_true',
                      help='Smoke run: tiny sweep, runlocal generator.')
  args = parser.parse_args(argv)
  parts = tuple(p for p in args.parts.split(',') if p)
  bad = set(parts) - {'gmm', 'images'}
  if bad:
    parser.error(f'unknown parts {sorted(bad)}: use gmm, images.')
  methods = tuple(m for m in args.methods.split(',') if m)
  if not methods or set(methods) - set(METHODS):
    parser.error(f'--methods: pick from {", ".join(METHODS)}, got '
                 f'{args.methods!r}.')
  run(args.workdir, gen_workdir=args.gen_workdir, parts=parts,
      quick=args.quick, sigma_y=args.sigma_y, n=args.num_samples,
      nfes=tuple(int(v) for v in args.nfes.split(',')),
      etas=tuple(float(v) for v in args.etas.split(',')), methods=methods,
      image_nfe=args.image_nfe, num_images=args.num_images)


if __name__ == '__main__':
  main()
