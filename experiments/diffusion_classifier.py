r"""Diffusion classifiers: p(y | x) from a class-conditional generative model.

  python -m experiments.diffusion_classifier --workdir=/tmp/guidance

Bayes' rule with the diffusion ELBO as log p(x | y) (Li et al. 2023;
Clark & Jaini 2023), noise shared across classes, and the adaptive schedule
that prunes unlikely classes (`visgen.classification.diffusion_classifier`):

* digits: the test accuracy of the class-conditional flow-matching model of
  `experiments.guidance_tradeoff` (reused from WORKDIR/generator when there,
  else trained by the project's loop), beside a discriminative classifier of
  the same architecture family and size (the residual MLP of
  `visgen.classification.noisy_classifier`, with the generator's width and
  depth, trained by the same loop on clean x0 of the same train split:
  configs/digits_noisy_classifier.py:clean), both on the 297-image test
  split.
* gmm: a Gaussian mixture with overlapping classes and exact
  class-conditional denoisers (`visgen.groundtruth`); the diffusion
  classifier's accuracy against the Bayes-optimal accuracy (argmax of the
  exact log p(x | y) + log p(y)), with the binomial standard error.

Writes WORKDIR/results.json: {"digits": {"diffusion_classifier_accuracy",
"discriminative_accuracy", ...}, "gmm": {"accuracy", "bayes_accuracy",
...}} and prints a Markdown table.
"""

import argparse
import json
import math
import os
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from experiments import guidance_tradeoff
from visgen.classification import diffusion_classifier as dc_lib
from visgen import config_loader
from visgen.classification import guided_sampling
from visgen.data import digits
from visgen.groundtruth import make_mixture
from visgen.interpolants import get_path


def discriminative_config(steps: int, *, width: int, depth: int,
                          runlocal: bool = False):
  arg = f':clean=true,width={width},depth={depth}' + (
      ',runlocal' if runlocal else '')
  c = config_loader.load(os.path.join(
      guidance_tradeoff.ROOT, 'configs/digits_noisy_classifier.py') + arg)
  c.total_steps = steps
  c.ckpt_every = max(steps // 2, 1)
  c.num_grid_samples = 0
  return c


def param_count(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def _batched(fn, x, chunk):
  """fn over x in fixed-size chunks (the last padded): one compile."""
  out = []
  for i in range(0, x.shape[0], chunk):
    part = x[i:i + chunk]
    pad = chunk - part.shape[0]
    res = fn(np.pad(part, ((0, pad),) + ((0, 0),) * (x.ndim - 1)), i)
    out.append(np.asarray(res)[:part.shape[0]])
  return np.concatenate(out)


def digits_part(workdir: str, *, gen_steps: int, disc_steps: int,
                num_draws: int, num_test: int | None, chunk: int = 16,
                runlocal: bool = False) -> dict:
  t0 = time.time()
  gen = guided_sampling.load_trained(
      guidance_tradeoff.generator_config(gen_steps, runlocal=runlocal),
      os.path.join(workdir, 'generator'), train_if_needed=True)
  t_gen = time.time() - t0
  test = digits.load_digits_split('test',
                                  size=gen.config.task.x_shape[0])
  n = len(test['label']) if num_test is None else num_test
  # Through the task: its model space (to_x0) and its denoiser / path.
  x = np.asarray(gen.task.to_x0({'image': test['image'][:n]}))
  y = np.asarray(test['label'][:n])
  dc = gen.task.diffusion_classifier(gen.params)
  key = jax.random.key(0)
  # The same draws for every chunk: the key is fixed; errors are per image.
  logits_fn = jax.jit(lambda xb: dc.logits(xb, key, num_draws=num_draws))
  t1 = time.time()
  logits = _batched(lambda xb, i: logits_fn(xb), x, chunk)
  t_dc = time.time() - t1
  acc = float(np.mean(np.argmax(logits, -1) == y))
  stages = ((max(num_draws // 4, 2), 3), (num_draws, 1))
  adaptive_fn = jax.jit(lambda xb: dc.classify_adaptive(xb, key,
                                                        stages=stages)[0])
  t2 = time.time()
  pred_ad = _batched(lambda xb, i: adaptive_fn(xb), x, chunk)
  t_ad = time.time() - t2
  nfe_ad = stages[0][0] * dc.num_classes + stages[1][0] * stages[0][1]

  disc_cfg = discriminative_config(disc_steps, width=gen.config.model.width,
                                   depth=gen.config.model.depth,
                                   runlocal=runlocal)
  t3 = time.time()
  disc = guided_sampling.load_trained(
      disc_cfg, os.path.join(workdir, 'discriminative'), train_if_needed=True)
  t_disc = time.time() - t3
  d_logits = jax.jit(lambda xb: disc.task.logits(disc.params, xb))(x)
  d_acc = float(np.mean(np.argmax(np.asarray(d_logits), -1) == y))
  return dict(
      diffusion_classifier_accuracy=acc,
      diffusion_classifier_adaptive_accuracy=float(np.mean(pred_ad == y)),
      discriminative_accuracy=d_acc,
      standard_error=dc_lib.bayes_accuracy_sampling_error(acc, n),
      num_test=n, num_draws=num_draws,
      nfe_per_image=num_draws * dc.num_classes,
      adaptive_stages=[list(s) for s in stages],
      adaptive_nfe_per_image=nfe_ad,
      generator_params=param_count(gen.params),
      discriminative_params=param_count(disc.params),
      generator_step=gen.step, discriminative_step=disc.step,
      wall_time_s=dict(generator=round(t_gen, 1),
                       diffusion_classifier=round(t_dc, 1),
                       adaptive=round(t_ad, 1),
                       discriminative_train=round(t_disc, 1)))


GMM_PATHS = (('linear', 'velocity'), ('vp', 'eps'))


def gmm_part(*, n: int, num_draws: int, paths=GMM_PATHS) -> dict:
  """Exact denoisers: the diffusion classifier against Bayes' rule."""
  t0 = time.time()
  k = 4
  g = make_mixture(jax.random.key(11), dim=8, num_components=8,
                   num_classes=k, scale=0.8, std=0.6)
  x, lab = g.sample(jax.random.key(12), n)
  log_prior = jnp.log(jnp.asarray([g.weights[g.labels == c].sum()
                                   for c in range(k)]))
  exact = jnp.stack([g.log_prob(x, label=jnp.full((n,), c))
                     for c in range(k)], -1) + log_prior
  bayes = float(jnp.mean(jnp.argmax(exact, -1) == lab))
  out = dict(bayes_accuracy=bayes, num_examples=n, num_classes=k, dim=8,
             num_draws=num_draws,
             standard_error=dc_lib.bayes_accuracy_sampling_error(bayes, n))
  for path_name, kind in paths:
    path = get_path(path_name)
    dc = dc_lib.DiffusionClassifier(g.denoiser(path=path, kind=kind), path,
                                    kind, k, t_min=1e-3, log_prior=log_prior)
    fn = jax.jit(lambda xb, dc=dc: dc.logits(xb, jax.random.key(13),
                                             num_draws=num_draws))
    logits = _batched(lambda xb, i, fn=fn: fn(xb), np.asarray(x),
                      min(n, 500))
    acc = float(np.mean(np.argmax(logits, -1) == np.asarray(lab)))
    agree = float(np.mean(np.argmax(logits, -1) == np.argmax(exact, -1)))
    out[f'{path_name}_{kind}'] = dict(accuracy=acc, agreement=agree)
  # The headline number: the quickstart's path and prediction kind.
  out['accuracy'] = out['linear_velocity']['accuracy']
  out['within_sampling_error'] = bool(
      abs(out['accuracy'] - bayes) < 2 * math.sqrt(2) * out['standard_error'])
  out['wall_time_s'] = round(time.time() - t0, 1)
  return out


def markdown(res: dict) -> str:
  d, g = res['digits'], res['gmm']
  lines = [
      '| data | classifier | accuracy | reference |',
      '|---|---|---|---|',
      f"| digits test ({d['num_test']}) | diffusion classifier "
      f"({d['num_draws']} draws x 10 classes) | "
      f"{d['diffusion_classifier_accuracy']:.3f} "
      f"+- {d['standard_error']:.3f} | |",
      f"| digits test | diffusion classifier, adaptive "
      f"{d['adaptive_stages']} ({d['adaptive_nfe_per_image']} NFE) | "
      f"{d['diffusion_classifier_adaptive_accuracy']:.3f} | |",
      f"| digits test | discriminative MLP ({d['discriminative_params']:,} "
      f"params vs generator {d['generator_params']:,}) | "
      f"{d['discriminative_accuracy']:.3f} | |",
  ]
  for path_name, kind in GMM_PATHS:
    if f'{path_name}_{kind}' in g:
      lines.append(
          f"| GMM ({g['dim']}-D, {g['num_classes']} classes, "
          f"{g['num_examples']} points) | diffusion classifier, exact "
          f"denoiser, {path_name}/{kind} | "
          f"{g[f'{path_name}_{kind}']['accuracy']:.3f} | Bayes "
          f"{g['bayes_accuracy']:.3f} +- {g['standard_error']:.3f} |")
  return '\n'.join(lines)


def run(workdir: str, *, gen_steps: int, disc_steps: int, num_draws: int,
        gmm_n: int, num_test: int | None = None, runlocal: bool = False,
        gmm_draws: int = 128, gmm_paths=GMM_PATHS) -> dict:
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  res = dict(digits=digits_part(workdir, gen_steps=gen_steps,
                                disc_steps=disc_steps, num_draws=num_draws,
                                num_test=num_test, runlocal=runlocal),
             gmm=gmm_part(n=gmm_n, num_draws=gmm_draws, paths=gmm_paths))
  # Not 'wall_time_s': the guidance experiment's key in a shared file.
  res['diffusion_classifier_wall_time_s'] = round(time.time() - t0, 1)
  path = os.path.join(workdir, 'results.json')
  # The guidance experiment writes results.json too when sharing WORKDIR:
  # keep its rows and add ours.
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    old.update(res)
    res = old
  with open(path, 'w') as f:
    json.dump(res, f, indent=2)
  print(markdown(res))
  print(f"wall time: {res['diffusion_classifier_wall_time_s']} s")
  return res


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[1])
  parser.add_argument('--workdir', required=True, help='Output directory.')
  parser.add_argument('--generator_steps', type=int, default=3000,
                      help='Generator training steps (if not reused).')
  parser.add_argument('--discriminative_steps', type=int, default=2000)
  parser.add_argument('--num_draws', type=int, default=64,
                      help='(t, eps) draws per class and image.')
  parser.add_argument('--gmm_examples', type=int, default=1000)
  parser.add_argument('--gmm_draws', type=int, default=128)
  parser.add_argument('--quick', action='store_true',
                      help="Smoke run: the configs' runlocal variants.")
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)  # the loop's progress lines
  if args.quick:
    run(args.workdir, gen_steps=20, disc_steps=20, num_draws=8, gmm_n=200,
        num_test=32, runlocal=True)
  else:
    run(args.workdir, gen_steps=args.generator_steps,
        disc_steps=args.discriminative_steps, num_draws=args.num_draws,
        gmm_n=args.gmm_examples, gmm_draws=args.gmm_draws)


if __name__ == '__main__':
  main()
