"""KL autoencoder (visgen.models.autoencoder), its task and latent codec."""

import json
import os

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest

from visgen import builder
from visgen import checkpoint as ckpt_lib
from visgen import config_lib
from visgen import config_loader
from visgen import models
from visgen import param_tree
from visgen.evaluators import classifier
from visgen.evaluators import perceptual
from visgen.models import autoencoder as ae_lib
from visgen.tasks import autoencoder as ae_task

AE = dict(name='autoencoder_kl', input_size=8, in_channels=3, ch=8,
          ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=4, norm_groups=4,
          mid_attention=True, dtype='float32')


def _host(tree):
  return {k: np.array(v) for k, v in param_tree.flatten(tree).items()}


def _images(n, size=8, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8)


@pytest.mark.parametrize('ch_mult,size,factor', [((1, 2, 2), 8, 4),
                                                 ((1, 1, 2, 2), 16, 8)])
def test_encode_decode_shapes(ch_mult, size, factor):
  kw = dict(AE, ch_mult=ch_mult, input_size=size, z_channels=5)
  del kw['name'], kw['dtype']
  model = nnx.eval_shape(lambda: ae_lib.AutoencoderKL(rngs=nnx.Rngs(0),
                                                      **kw))
  assert model.factor == factor
  graphdef, params = models.split_model(model)
  apply = models.make_apply(graphdef)
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  mean, logvar = jax.eval_shape(
      lambda p, x: apply(p, x, None, method='encode'), params, x)
  h = size // factor
  assert mean.shape == logvar.shape == (2, h, h, 5)
  out = jax.eval_shape(lambda p, z: apply(p, z, None, method='decode'),
                       params, mean)
  assert out.shape == (2, size, size, 3)
  flat = param_tree.flatten(params)
  # diffusers' names: one downsampler per level but the last, resnets+1 up.
  assert 'encoder/down_blocks/0/downsamplers/0/conv/kernel' in flat
  assert not any(k.startswith(f'encoder/down_blocks/{len(ch_mult) - 1}/down')
                 for k in flat)
  assert 'decoder/up_blocks/0/resnets/1/conv1/kernel' in flat
  assert flat['quant_conv/kernel'].shape == (1, 1, 10, 10)
  with pytest.raises(ValueError, match='divisible'):
    ae_lib.AutoencoderKL(rngs=nnx.Rngs(0), **dict(kw, input_size=size + 2))


def test_kl_closed_form_matches_numerical_integral():
  mean = np.array([[0.0, 1.3, -0.7]], np.float32)
  logvar = np.array([[0.0, -1.2, 0.9]], np.float32)
  got = float(ae_lib.kl_divergence(jnp.asarray(mean), jnp.asarray(logvar))[0])
  z = np.linspace(-15, 15, 200_001)
  total = 0.0
  for m, lv in zip(mean[0], logvar[0]):
    s = np.exp(0.5 * lv)
    logq = -0.5 * ((z - m) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)
    logp = -0.5 * z**2 - 0.5 * np.log(2 * np.pi)
    total += np.trapezoid(np.exp(logq) * (logq - logp), z)
  assert got == pytest.approx(total, rel=1e-5)
  assert float(ae_lib.kl_divergence(jnp.zeros((1, 4)),
                                    jnp.zeros((1, 4)))[0]) == 0.0


def test_posterior_samples_have_the_posterior_moments():
  n = 200_000
  mean = jnp.full((n, 2), jnp.array([0.5, -2.0]))
  logvar = jnp.full((n, 2), jnp.array([np.log(0.25), np.log(4.0)]))
  z = np.asarray(ae_lib.sample_posterior(jax.random.key(0), mean, logvar))
  # Standard errors: std / sqrt(n) ~ 0.0045 for the larger std; 5 sigma.
  np.testing.assert_allclose(z.mean(0), [0.5, -2.0], atol=0.025)
  np.testing.assert_allclose(z.std(0), [0.5, 2.0], rtol=0.01)


def test_perceptual_distance_is_the_lpips_formula():
  net = classifier.FeatureCNN(channels=3, widths=(4, 6), feature_dim=8,
                              num_classes=2, num_attributes=0,
                              rngs=nnx.Rngs(1))
  dist = perceptual.distance_from_module(net, input_size=8, channels=3)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
  y = jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
  feats = jax.jit(lambda x: perceptual.layer_features(
      net, x, input_size=8, channels=3))
  dist = jax.jit(dist)
  d = np.asarray(dist(x, y))
  fx, fy = feats(x), feats(y)
  want = 0.0
  for a, b in zip(fx, fy):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a = a / np.sqrt((a**2).sum(-1, keepdims=True) + 1e-10)
    b = b / np.sqrt((b**2).sum(-1, keepdims=True) + 1e-10)
    want = want + ((a - b) ** 2).sum(-1).mean((1, 2))
  np.testing.assert_allclose(d, want, rtol=1e-5)
  assert np.all(d > 0)
  np.testing.assert_allclose(np.asarray(dist(x, x)), 0.0, atol=1e-12)


def _ae_config(**task):
  c = config_loader.load('configs/autoencoder_shapes.py:runlocal')
  c.model.update({k: v for k, v in AE.items() if k != 'name'})
  c.optim.update(lr=3e-3, warmup_steps=0, schedule='constant')
  c.task.update(task)
  return c


@pytest.fixture(scope='module')
def trained_ae(tmp_path_factory):
  """A few steps of the autoencoder task on one batch, saved as a workdir."""
  c = _ae_config()
  b = builder.build(c)
  state = builder.create_state(b, jax.random.key(0))
  step = builder.make_train_step(b)
  batch = {'image': jnp.asarray(_images(8))}
  losses = []
  for _ in range(6):
    state, metrics = step(state, b.frozen.params, batch, jax.random.key(1))
    losses.append(float(metrics['loss']))
  workdir = str(tmp_path_factory.mktemp('ae'))
  ckpt = builder.checkpointer(b, workdir, every=1, keep_last=1,
                              async_save=False)
  ckpt.save(6, state, force=True)
  ckpt.close()
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(c.to_json_best_effort())
  stats = ae_task.latent_stats(np.asarray(
      jax.jit(lambda p, im: b.task._net(p, im / 127.5 - 1.0, 'encode')[0])(
          builder.first_ema(state), batch['image'])))
  with open(os.path.join(workdir, ae_task.STATS_FILE), 'w') as f:
    json.dump(stats, f)
  return b, state, losses, metrics, workdir


def test_autoencoder_task_loss_decreases_and_media_panels(trained_ae):
  b, state, losses, metrics, _ = trained_ae
  assert losses[-1] < 0.8 * losses[0], losses
  for k in ('rec', 'kl', 'psnr'):
    assert np.isfinite(float(metrics[k])), k
  cond = b.task.sample_cond(4)
  assert cond['image'].shape == (4, 8, 8, 3)
  x = builder.make_sample_fn(b, 4)(state['params'], b.frozen.params, cond,
                                   jax.random.key(0), 1.0)
  media = b.task.to_media(x, cond)
  assert media.samples.shape == media.condition.shape == (4, 8, 8, 3)
  np.testing.assert_array_equal(media.condition, cond['image'])


def test_gan_terms_one_optimizer_and_adaptive_weight():
  """The discriminator's gradient is the hinge loss's alone; the adaptive
  weight equals LDM's |grad_W rec| / |grad_W g| at the last decoder conv."""
  c = _ae_config(disc_weight=0.5, disc_start=0)
  c.model.update(ch=4, ch_mult=(1, 2), mid_attention=False, disc_layers=1,
                 disc_channels=4)
  b = builder.build(c)
  task = b.task
  params = builder.create_state(b, jax.random.key(0))['params']
  batch = {'image': jnp.asarray(_images(4))}
  key = jax.random.key(3)
  ts = task.init_state(None)
  grads, aux = jax.jit(jax.grad(
      lambda p: task.loss(p, {}, ts, batch, key)[:2], has_aux=True))(params)
  x = batch['image'] / 127.5 - 1.0

  def parts(p):  # The same forward pass, written out.
    k_post, k_drop = jax.random.split(key)
    mean, logvar = task._net(p, x, 'encode', train=True, rngs=k_drop)
    z = ae_lib.sample_posterior(k_post, mean, logvar)
    rec = task._net(p, z, 'decode', train=True,
                    rngs=jax.random.fold_in(k_drop, 1))
    return rec

  def hinge(p):
    rec = jax.lax.stop_gradient(parts(p))
    real = task._net(p, x, 'discriminate')
    fake = task._net(p, rec, 'discriminate')
    return 0.5 * (jnp.mean(jax.nn.relu(1 - real))
                  + jnp.mean(jax.nn.relu(1 + fake)))

  w = 'decoder/conv_out/kernel'

  def on_w(fn):
    return lambda p: fn(p, parts(p))

  frozen_d = jax.lax.stop_gradient(params)
  g_hinge, rec_w, g_w = jax.jit(lambda p: (
      jax.grad(hinge)(p),
      jax.grad(on_w(lambda p, r: jnp.mean(task.rec_terms(x, r)[0])))(p),
      jax.grad(on_w(lambda p, r: -jnp.mean(
          task._net(frozen_d, r, 'discriminate'))))(p)))(params)
  g_hinge = _host(g_hinge)
  got = _host(grads)
  for k in got:
    if k.startswith('discriminator/'):
      np.testing.assert_allclose(got[k], g_hinge[k], rtol=1e-4, atol=1e-7,
                                 err_msg=k)
  want = 0.5 * np.linalg.norm(_host(rec_w)[w]) / (
      np.linalg.norm(_host(g_w)[w]) + 1e-4)
  assert float(aux['d_weight']) == pytest.approx(want, rel=1e-4)


def test_latent_stats_round_trip_and_codec_normalisation(tmp_path):
  rng = np.random.default_rng(0)
  mu, sd = np.array([1.0, -2.0, 0.5, 3.0]), np.array([0.5, 2.0, 1.0, 4.0])
  z = mu + sd * rng.standard_normal((500, 2, 2, 4))
  stats = ae_task.latent_stats(z)
  np.testing.assert_allclose(stats['latent_mean'], z.reshape(-1, 4).mean(0))
  np.testing.assert_allclose(stats['latent_std'], z.reshape(-1, 4).std(0))
  assert stats['latent_scale_factor'] == pytest.approx(1 / z.std())
  with open(tmp_path / 'metrics.json', 'w') as f:
    json.dump(dict(stats, psnr=20.0), f)
  read = ae_task.read_latent_stats(str(tmp_path))
  assert read == stats
  codec = ae_task.LatentCodec(
      'ae', None, image_shape=(4, 4, 3), normalize='channel',
      scale=1 / np.asarray(read['latent_std']), shift=read['latent_mean'])
  zn = (z - codec.shift) * codec.scale
  np.testing.assert_allclose(zn.reshape(-1, 4).mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(zn.reshape(-1, 4).std(0), 0.5, rtol=1e-5)
  with pytest.raises(FileNotFoundError, match='latent_stats'):
    ae_task.read_latent_stats(str(tmp_path / 'none'))


def test_frozen_autoencoder_encodes_on_the_fly(trained_ae):
  """Latent generation with the AE as a frozen component: two steps, the
  AE parameters bit-identical, samples decoded to images."""
  _, _, _, _, workdir = trained_ae
  c = config_lib.base_config()
  c.frozen = mlc.ConfigDict(dict(autoencoder=dict(
      source=f'workdir:{workdir}')))
  c.data = dict(name='shapes', resolution=8, num_examples=16, batch_size=4)
  c.task = dict(name='generation', x_shape=(2, 2, 4), flatten=True,
                latent=dict(frozen='autoencoder', image_shape=(8, 8, 3)))
  c.model = dict(name='mlp', dim=16, width=16, depth=1, num_classes=0)
  c.path = dict(name='linear')
  c.prediction = 'velocity'
  c.weighting = dict(name='uniform')
  c.time_dist = dict(name='uniform')
  c.optim = config_lib.optim(lr=1e-3)
  c.sampler = dict(name='euler', steps=2)
  c.ema_decays = ()
  b = builder.build(c)
  ae_before = _host(b.frozen.params['autoencoder'])
  codec = b.task.codec
  with open(os.path.join(workdir, ae_task.STATS_FILE)) as f:
    assert codec.scale == np.float32(json.load(f)['latent_scale_factor'])
  state = builder.create_state(b, jax.random.key(0))
  step = builder.make_train_step(b)
  batch = {'image': jnp.asarray(_images(4, seed=1))}
  p_before = _host(state['params'])
  for _ in range(2):
    state, metrics = step(state, b.frozen.params, batch, jax.random.key(2))
  assert np.isfinite(float(metrics['loss']))
  for k, v in _host(b.frozen.params['autoencoder']).items():
    np.testing.assert_array_equal(v, ae_before[k], err_msg=k)
  assert any(not np.array_equal(v, p_before[k])
             for k, v in _host(state['params']).items())
  # The codec's scale cancels: decode(encode(x)) is the AE's reconstruction.
  fr = b.frozen.params
  ae_apply = b.frozen.apply['autoencoder']

  @jax.jit
  def round_trip(fr, images):
    p = fr['autoencoder']
    mean = ae_apply(p, images / 127.5 - 1.0, method='encode')[0]
    want = jnp.clip(ae_apply(p, mean, method='decode'), -1, 1)
    return codec.decode(fr, codec.encode(fr, images)), want

  got, want = round_trip(fr, batch['image'])
  np.testing.assert_allclose(got, want, atol=1e-5)
  samples = builder.make_sample_fn(b, 2)(state['params'], fr, {},
                                         jax.random.key(0), 1.0)
  media = b.task.to_media(samples, {})
  assert media.samples.shape == (2, 8, 8, 3)


def test_pre_encoding_cli_writes_the_encoder_means(trained_ae, tmp_path):
  from visgen import data  # pylint: disable=g-import-not-at-top
  from visgen.data import latents  # pylint: disable=g-import-not-at-top

  b, state, _, _, workdir = trained_ae
  out = str(tmp_path / 'lat' / 'train')
  assert latents.main([f'--autoencoder={workdir}', '--dataset=shapes',
                       '--resolution=8', '--num_examples=6', '--batch=4',
                       f'--out={out}']) == 0
  src = data.get_source('shapes', split='train', resolution=8)
  images = np.stack([src[i]['image'] for i in range(6)])
  want = jax.jit(lambda p, im: b.task._net(p, im / 127.5 - 1.0, 'encode')[0])(
      builder.first_ema(state), images)
  got = data.get_source('latents', split='train', path=str(tmp_path / 'lat'))
  assert len(got) == 6
  np.testing.assert_allclose(np.stack([got[i]['latent'] for i in range(6)]),
                             want, rtol=2e-3, atol=2e-3)
  with open(os.path.join(out, 'meta.json')) as f:
    meta = json.load(f)
  with open(os.path.join(workdir, ae_task.STATS_FILE)) as f:
    assert meta['latent_scale_factor'] == json.load(f)['latent_scale_factor']


def test_latent_channels_must_match_the_frozen_autoencoder(tmp_path):
  """A generator whose x_shape disagrees with the autoencoder's z_channels
  fails at build time naming both numbers and the fix (not with a shape
  error inside the first step)."""
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump({'model': {'name': 'autoencoder_kl', 'z_channels': 8}}, f)
  c = config_lib.base_config()
  c.frozen = mlc.ConfigDict(dict(autoencoder=dict(
      source=f'workdir:{tmp_path}')))
  c.task = mlc.ConfigDict(dict(name='generation', x_shape=(8, 8, 4)))
  with pytest.raises(ValueError, match=r'4 latent channels .* encodes 8 '
                     r'\(model\.z_channels\).*z=8'):
    ae_task._check_latent_channels(c, 'autoencoder')  # pylint: disable=protected-access
  c.task.x_shape = (8, 8, 8)
  ae_task._check_latent_channels(c, 'autoencoder')  # pylint: disable=protected-access
  # The side: an f=2 autoencoder (two levels) makes 16x16 latents of
  # 32x32 scenes, not 8x8.
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump({'model': {'name': 'autoencoder_kl', 'z_channels': 8,
                         'ch_mult': [1, 2]}}, f)
  c.task.latent = dict(frozen='autoencoder', image_shape=(32, 32, 3))
  with pytest.raises(ValueError, match=r'side 8 .* f=2 .* 16x16 latents.*'
                     r't2i_shapes.py:f=2'):
    ae_task._check_latent_channels(c, 'autoencoder')  # pylint: disable=protected-access
  c.task.x_shape = (16, 16, 8)
  ae_task._check_latent_channels(c, 'autoencoder')  # pylint: disable=protected-access
  assert config_loader.load('configs/autoencoder_shapes.py:f=2').model[
      'ch_mult'] == (1, 2)
  with pytest.raises(ValueError, match='f=3: .* by 2, 4 or 8'):
    config_loader.load('configs/autoencoder_shapes.py:f=3')
