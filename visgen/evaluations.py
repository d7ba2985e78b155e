"""Evaluations of a trained model, shared by the end of training, the loop's
`eval_every` and `--mode=eval`.

`config.eval` maps names of `EVALS` to their keyword arguments:

  config.eval = {'features': dict(feature_net='digits', num_samples=500),
                 'bits_per_dim': dict(num_images=256)}

Each evaluation is `fn(b, params, rng, **kw) -> {metric: float}` with `b`
the built run (`visgen.builder.Built`) and `params` the EMA parameters. They
reach the task only through its contract: samples come from `task.sample`
with conditions from `task.sample_cond`, and are scored as `task.to_media`
shows them; likelihoods come from the task's `bits_per_dim` hook.

A new evaluator: a function here registered in `EVALS` (its metrics code
in `visgen/evaluators/`).
"""

from typing import Any

import jax
import numpy as np

from visgen import builder
from visgen import media as media_lib
from visgen.data import preprocess
from visgen.registry import Registry
from visgen.tasks import base as tasks_base

EVALS = Registry('evaluation')


def draw(b: builder.Built, params, rng, *, num: int, batch: int,
         sample_fn=None) -> media_lib.Media:
  """`num` samples as media for the conditions `task.sample_cond(num)`,
  `batch` per jitted call (the last call padded: one compile)."""
  task = b.task
  fn = sample_fn or builder.make_sample_fn(b, batch)
  guidance = builder.guidance_scale(b.config)
  cond = task.sample_cond(num)
  out = []
  for i in range(0, num, batch):
    k = min(batch, num - i)
    padded = tasks_base.cond_slice(cond, i, k, batch)
    x = fn(params, b.frozen.params, padded, jax.random.fold_in(rng, i),
           guidance)
    out.append(task.to_media(x, padded).select(slice(0, k)))
  return media_lib.concat(out)


def _media_shape(b: builder.Built, fn, params, batch: int):
  """The media of one sampling call, from shapes alone (nothing sampled)."""
  cond = b.task.sample_cond(batch)
  shape = jax.eval_shape(fn, params, b.frozen.params, cond,
                         jax.random.key(0), builder.guidance_scale(b.config))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shape)
  return b.task.to_media(zeros, cond)


@EVALS.register('features')
def feature_metrics(b: builder.Built, params, rng, *, feature_net='digits',
                    reference='digits:test', num_samples=500, batch=250,
                    image_size=None) -> dict[str, float]:
  """The evaluator engineer's `InLoopEvaluator` on fresh EMA samples.

  Reports feature-space FID / precision / recall (and their real-against-
  real floors) and, when the task's media carry labels (class-conditional
  tasks), `class_accuracy`: the fraction of samples the feature net's
  classifier (trained on the real train split) labels with the class they
  were drawn for.
  """
  from visgen.evaluators import in_loop  # pylint: disable=g-import-not-at-top

  fn = builder.make_sample_fn(b, batch)
  probe = _media_shape(b, fn, params, batch)
  if probe.kind != 'image':
    raise ValueError(f"The 'features' evaluation scores images; task "
                     f'{b.config.task.name!r} makes {probe.kind} media.')

  def sample_fn(key, n):
    m = draw(b, params, key, num=n, batch=batch, sample_fn=fn)
    return m.samples if m.labels is None else (m.samples, m.labels)

  evaluator = in_loop.InLoopEvaluator(
      feature_net=feature_net, reference=reference, num_samples=num_samples,
      image_size=image_size or probe.samples.shape[1], batch_size=batch)
  out = evaluator.run(sample_fn, rng)
  key = f'{feature_net}_class_accuracy'
  if key in out:
    out['class_accuracy'] = out[key]
  return out


@EVALS.register('bits_per_dim')
def bits_per_dim_metric(b: builder.Built, params, rng, *, split='test',
                        num_images=256, batch=128, steps=50,
                        divergence='hutchinson') -> dict[str, float]:
  """Bits/dim of held-out data under the probability-flow ODE of the EMA
  model: the mean of the task's `bits_per_dim(params, frozen, batch, key)`
  over the first `num_images // batch * batch` examples of `split`
  (RK4 with `steps` steps, Hutchinson or exact divergence)."""
  task = b.task
  if not hasattr(task, 'bits_per_dim'):
    raise ValueError(f'Task {b.config.task.name!r} has no bits_per_dim '
                     'hook; remove bits_per_dim from config.eval.')
  fn = jax.jit(lambda p, fr, bt, k: task.bits_per_dim(
      p, fr, bt, k, num_steps=steps, divergence=divergence))
  total, count = 0.0, 0
  for i, bt in enumerate(builder.heldout_batches(b, split, batch=batch,
                                                 num=num_images)):
    bpd = fn(params, b.frozen.params, bt, jax.random.fold_in(rng, i))
    total += float(np.sum(np.asarray(bpd)))
    count += int(bpd.shape[0])
  return {'bits_per_dim': total / count, 'bits_per_dim_images': count}


@EVALS.register('reconstruction')
def reconstruction_metrics(b: builder.Built, params, rng, *, split='test',
                           num_images=1000, batch=250, feature_net='shapes',
                           reference='shapes:train',
                           num_reference=8000) -> dict[str, float]:
  """An autoencoder's reconstructions of the first `num_images` of `split`:
  PSNR (dB, images in [0, 1] after uint8 quantisation) and the feature
  net's FID / precision / recall of the reconstructions against
  `num_reference` images of `reference`, beside the real-against-real floor
  (the same net's test-against-train metrics, so with the defaults the
  reconstruction FID and its floor compare the same test images, real or
  reconstructed, to the same train set). Needs the task's `reconstruct`."""
  del rng
  from visgen.evaluators import datasets  # pylint: disable=g-import-not-at-top
  from visgen.evaluators import in_loop  # pylint: disable=g-import-not-at-top

  task = b.task
  if not hasattr(task, 'reconstruct'):
    raise ValueError(f'Task {b.config.task.name!r} does not reconstruct '
                     'images; remove reconstruction from config.eval.')
  fn = jax.jit(task.reconstruct)
  reals, recs = [], []
  for bt in builder.heldout_batches(b, split, batch=batch, num=num_images):
    reals.append(np.asarray(bt['image']))
    recs.append(np.asarray(tasks_base.array_media(
        fn(params, bt['image']), {}, x_shape=reals[-1].shape[1:]).samples))
  real, rec = np.concatenate(reals), np.concatenate(recs)
  mse = np.mean(np.square(real / 255.0 - rec / 255.0), axis=(1, 2, 3))
  out = {'psnr': float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-10)))),
         'reconstruction_images': int(len(real))}
  if feature_net:
    name, ref_split = reference.split(':', 1)
    ref = datasets.load_images(name, split=ref_split, size=real.shape[1],
                               num_examples=num_reference)
    evaluator = in_loop.InLoopEvaluator(
        feature_net=feature_net, reference=ref, num_samples=len(rec),
        image_size=real.shape[1], batch_size=batch)
    it = iter(range(0, len(rec), batch))
    out.update(evaluator.run(lambda key, n: rec[next(it):][:n],
                             jax.random.key(0)))
  return out


@EVALS.register('latent_stats')
def latent_stats_metric(b: builder.Built, params, rng, *, split='train',
                        num_images=1000, batch=250) -> dict[str, Any]:
  """An autoencoder's latent statistics on `num_images` of `split`
  (posterior means): SD's scale factor 1/std and EDM2's per-channel
  mean/std (`tasks.autoencoder.latent_stats`), stored in metrics.json,
  where frozen-autoencoder latent tasks read them."""
  del rng
  from visgen.tasks import autoencoder  # pylint: disable=g-import-not-at-top

  encode = jax.jit(lambda p, im: b.apply(
      p, preprocess.to_float(im), None, None, method='encode')[0])
  key = getattr(b.task, 'data_key', 'image')  # 'video': video autoencoders
  zs = [np.asarray(encode(params, bt[key])) for bt in
        builder.heldout_batches(b, split, batch=batch, num=num_images)]
  return autoencoder.latent_stats(np.concatenate(zs))


@EVALS.register('video_reconstruction')
def video_reconstruction_metrics(b: builder.Built, params, rng, *,
                                 split='test', num_clips=256,
                                 batch=64) -> dict[str, Any]:
  """A video autoencoder's reconstructions of the first `num_clips` clips
  of `split` (uint8-quantised): per-frame PSNR (mean, first frame, later
  frames, per frame index) and temporal flicker, as `ae_*` metrics
  (`visgen.evaluators.video_ae`, which defines them)."""
  del rng
  from visgen.evaluators import video_ae  # pylint: disable=g-import-not-at-top

  return video_ae.evaluate(b, params, split=split, num=num_clips,
                           batch=batch)


@EVALS.register('prompt_accuracy')
def prompt_accuracy_metric(b: builder.Built, params, rng, *,
                           num_prompts=200, batch=100, scales=(),
                           parser=None) -> dict[str, Any]:
  """GenEval-style prompt accuracy of a text-to-image model on the scene
  world (`visgen.evaluators.scene_parser`): samples for the captions of
  held-out test scenes are parsed back into objects and checked per
  category (shape, colour, size, count, position) and overall.

  Reports, at the config's guidance scale: `prompt_accuracy` (overall) and
  `prompt_accuracy_<category>` on captions whose (colour, shape) pairs all
  occurred in training; `prompt_accuracy_heldout` on captions with a pair
  held out of the train split (`config.data.heldout`; null without one);
  `prompt_accuracy_unguided` (scale 1: the plain conditional model);
  `prompt_accuracy_ceiling` (and `_<category>`): the parser on the real
  test scenes with their own captions; for latent models
  `prompt_accuracy_latent_ceiling` (and `_<category>`): the same scenes
  encoded and decoded by the frozen autoencoder, what the latent space
  allows; and for every scale in `scales`,
  `prompt_accuracy_cfg<scale>` (the guidance table). `parser` overrides
  the parser network's recipe (`scene_parser.Recipe` fields)."""
  # pylint: disable=g-import-not-at-top
  from visgen.data import latents as latents_lib
  from visgen.data import shapes
  from visgen.evaluators import scene_parser
  # pylint: enable=g-import-not-at-top

  task = b.task
  if 'prompt' not in getattr(task, 'REQUESTS', ()):
    raise ValueError(f'prompt_accuracy needs a text-to-image task; task '
                     f'{b.config.task.name!r} takes no prompts: remove '
                     'prompt_accuracy from config.eval.')
  dataset, options = latents_lib.origin(b.config)
  if dataset != 'shapes':
    raise ValueError('prompt_accuracy parses scene-world images: it needs '
                     "config.data.name='shapes' (or latents of shapes), not "
                     f'{dataset!r}.')
  res = int(task.resolution)
  heldout = shapes.heldout_pairs(options.get('heldout', ()))
  src = shapes.ShapesSource(split='test', resolution=res)
  seen, unseen = [], []
  for i in range(len(src)):
    if len(seen) >= num_prompts and (len(unseen) >= num_prompts or
                                     not heldout):
      break
    scene = src.scene(i)
    group = unseen if shapes.has_heldout(scene, heldout) else seen
    if len(group) < num_prompts:
      group.append(shapes.caption(scene))
  sp = scene_parser.SceneParser(scene_parser.Recipe(
      **{'resolution': res, **dict(parser or {})}))
  fn = builder.make_sample_fn(b, batch)

  def accuracy(captions, scale, key):
    images = []
    for i in range(0, len(captions), batch):
      part = captions[i:i + batch]
      cond = tasks_base.cond_slice(task.prompt_cond(part, negative=''), 0,
                                   len(part), batch)
      x = fn(params, b.frozen.params, cond, jax.random.fold_in(key, i),
             np.float32(scale))
      images.append(task.to_media(x, cond).samples[:len(part)])
    return scene_parser.score(captions, sp.parse(np.concatenate(images)))

  seen_at = {}  # scale -> scores on the seen captions (each drawn once)

  def seen_accuracy(scale):
    if scale not in seen_at:
      seen_at[scale] = accuracy(seen, scale, rng)
    return seen_at[scale]

  scale = float(b.config.sampler.get('cfg_scale', 1.0))
  main = seen_accuracy(scale)
  out = {'prompt_accuracy': main['overall'],
         **{f'prompt_accuracy_{k}': v for k, v in main.items()
            if k != 'overall'},
         'prompt_accuracy_heldout': (
             accuracy(unseen, scale, rng)['overall'] if unseen else None),
         'prompt_accuracy_unguided': seen_accuracy(1.0)['overall'],
         'prompt_accuracy_scale': scale,
         'prompt_accuracy_prompts': len(seen),
         'prompt_accuracy_heldout_prompts': len(unseen)}
  ceiling = sp.ceiling(num_prompts)
  out['prompt_accuracy_ceiling'] = ceiling['overall']
  out.update({f'prompt_accuracy_ceiling_{k}': v for k, v in ceiling.items()
              if k != 'overall'})
  codec = getattr(task, 'codec', None)
  if codec is not None:
    # What the latent space itself allows: the same real test scenes
    # through the frozen autoencoder (encode, decode) and the parser.
    images, _, captions = scene_parser.scenes('test', num_prompts, res)
    roundtrip = jax.jit(lambda f, im: codec.decode(f, codec.encode(f, im)))
    rec = np.concatenate([preprocess.to_uint8(np.asarray(
        roundtrip(b.frozen.params, images[i:i + batch])))
                          for i in range(0, len(images), batch)])
    latent = scene_parser.score(captions, sp.parse(rec))
    out['prompt_accuracy_latent_ceiling'] = latent['overall']
    out.update({f'prompt_accuracy_latent_ceiling_{k}': v
                for k, v in latent.items() if k != 'overall'})
  for s in scales:
    out[f'prompt_accuracy_cfg{float(s):g}'] = seen_accuracy(float(s))[
        'overall']
  return out


def run_evals(b: builder.Built, params, rng) -> dict[str, Any]:
  """Runs every evaluation in `config.eval` (a dict name -> kwargs)."""
  results = {}
  for i, (name, kw) in enumerate(sorted(b.config.get('eval', {}).items())):
    results.update(EVALS.get(name)(b, params, jax.random.fold_in(rng, i),
                                   **dict(kw)))
  return results
