"""The causal video autoencoder (visgen.models.video_autoencoder), its task,
metrics (visgen.evaluators.video_ae) and config, trained once through
visgen.main.

Causality is checked exactly: perturbing frames after latent frame j's
receptive window (input frames 0 .. 4j) leaves latents 0 .. j bit-identical,
and decoded frame t depends on latent frames 0 .. ceil(t / 4) only.
"""

import importlib.util
import json
import os

from absl import flags
from flax import nnx
import jax
import numpy as np
import pytest

from visgen import main as main_lib
from visgen import models
from visgen.evaluators import video_ae
from visgen.models import video_autoencoder as vae_lib
from visgen.tasks import video_autoencoder as task_lib
from visgen.validate import UserError

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
TINY = dict(input_size=8, num_frames=9, in_channels=3, ch=4,
            ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=2,
            norm_groups=4)


def _config(arg='runlocal'):
  path = os.path.join(ROOT, 'configs', 'video_autoencoder.py')
  spec = importlib.util.spec_from_file_location('configs.video_ae', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _build(**kw):
  model = vae_lib.VideoAutoencoderKL(rngs=nnx.Rngs(0), **dict(TINY, **kw))
  graphdef, params = models.split_model(model)
  apply = models.make_apply(graphdef)
  encode = jax.jit(lambda p, x: apply(p, x, None, method='encode')[0])
  decode = jax.jit(lambda p, z: apply(p, z, None, method='decode'))
  return model, params, encode, decode


@pytest.fixture(scope='module')
def tiny():
  return _build()


@pytest.fixture(scope='module', params=[True, False], ids=['residual',
                                                           'plain'])
def both(request, tiny):
  """The default (DC-AE residual shortcuts) and the plain stack."""
  return tiny if request.param else _build(residual=False)


def _clips(n=2, t=9, size=8, c=3, seed=0):
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (n, t, size, size, c)).astype(np.float32)


def test_shapes_t_1_plus_4k_to_1_plus_k(tiny):
  model, params, encode, decode = tiny
  assert (model.factor, model.temporal_factor) == (4, 4)
  assert model.latent_shape == (3, 2, 2, 2)
  for t, k in ((1, 0), (5, 1), (9, 2), (13, 3)):
    z = encode(params, _clips(t=t))
    assert z.shape == (2, 1 + k, 2, 2, 2), t
    assert decode(params, z).shape == (2, t, 8, 8, 3), t
  n = sum(x.size for x in jax.tree.leaves(params))
  assert 1_000 < n < 100_000, n


def test_encoder_is_causal_and_frame0_is_encoded_alone(both):
  _, params, encode, _ = both
  x = _clips()
  z = np.asarray(encode(params, x))
  rng = np.random.default_rng(1)
  for j in range(3):
    y = x.copy()
    y[:, 4 * j + 1:] = rng.uniform(-1, 1, y[:, 4 * j + 1:].shape)
    zy = np.asarray(encode(params, y))
    np.testing.assert_array_equal(zy[:, :j + 1], z[:, :j + 1])  # bit-exact
    if j < 2:
      assert np.abs(zy[:, j + 1:] - z[:, j + 1:]).max() > 1e-3
  # Frame 0 alone (a one-frame video) and a prefix give the same latents.
  np.testing.assert_allclose(np.asarray(encode(params, x[:, :1]))[:, 0],
                             z[:, 0], atol=1e-5)
  np.testing.assert_allclose(np.asarray(encode(params, x[:, :5])),
                             z[:, :2], atol=1e-5)


def test_decoder_is_causal(both):
  _, params, encode, decode = both
  z = np.asarray(encode(params, _clips()))
  out = np.asarray(decode(params, z))
  z2 = z.copy()
  z2[:, 2] += 1.0
  out2 = np.asarray(decode(params, z2))
  # Frame t sees latent frames 0 .. ceil(t / 4): frames 0-4 only 0 and 1.
  np.testing.assert_array_equal(out2[:, :5], out[:, :5])
  assert np.abs(out2[:, 5:] - out[:, 5:]).max() > 1e-3
  z3 = z.copy()
  z3[:, 1] += 1.0
  np.testing.assert_array_equal(np.asarray(decode(params, z3))[:, 0],
                                out[:, 0])


def test_bad_inputs_name_the_fix(tiny):
  model, params, encode, _ = tiny
  with pytest.raises(UserError, match=r'1 \+ 4k'):
    encode(params, _clips(t=8))
  with pytest.raises(UserError, match='divisible'):
    encode(params, _clips(size=6))
  with pytest.raises(UserError, match=r'1 \+ 4k'):
    vae_lib.VideoAutoencoderKL(rngs=nnx.Rngs(0), **dict(TINY, num_frames=6))
  with pytest.raises(UserError, match='z_channels: 8 and 3; one must divide'):
    vae_lib.VideoAutoencoderKL(rngs=nnx.Rngs(0), **dict(TINY, z_channels=3))
  with pytest.raises(UserError, match='temporal_downsample'):
    vae_lib.VideoAutoencoderKL(rngs=nnx.Rngs(0), **dict(
        TINY, temporal_downsample=(True,)))
  del model
  with pytest.raises(ValueError, match='1 \\+ 4k .* frames=9'):
    _config('frames=8')
  with pytest.raises(ValueError, match='Valid choices: shapes_video, '
                     'moving_digits'):
    _config('dataset=cifar10')
  with pytest.raises(ValueError, match='f=4 or f=8'):
    _config('f=2')
  c = _config('')
  c.task.perceptual_weight = 1.0
  with pytest.raises(UserError, match='perceptual_weight'):
    task_lib.VideoAutoencoderTask(c)
  c = _config('')
  c.data.num_frames = 5
  with pytest.raises(UserError, match='num_frames'):
    task_lib.VideoAutoencoderTask(c)


def test_f8_config_and_model():
  c = _config('f=8,dataset=moving_digits')
  assert c.task.x_shape == (9, 32, 32, 1) and c.data.digit_size == 16
  model = nnx.eval_shape(lambda: models.get_model(
      'video_autoencoder', rngs=nnx.Rngs(0),
      **{k: v for k, v in c.model.items() if k not in ('name', 'dtype')}))
  assert (model.factor, model.temporal_factor) == (8, 4)
  assert model.latent_shape == (3, 4, 4, 8)


def test_psnr_closed_form_and_uint8_float_agree():
  x = np.zeros((2, 3, 4, 4, 1), np.uint8)
  rec = x.copy()
  rec[:, 1] = 51   # error 0.2 -> PSNR = -20 log10(0.2)
  rec[:, 2] = 255  # error 1 -> 0 dB
  p = video_ae.psnr_per_frame(x, rec)
  np.testing.assert_allclose(p[:, 0], 100.0)  # exact frame: the cap
  np.testing.assert_allclose(p[:, 1], -20 * np.log10(0.2), rtol=1e-12)
  np.testing.assert_allclose(p[:, 2], 0.0, atol=1e-12)
  xf, rf = x / 127.5 - 1.0, rec / 127.5 - 1.0
  np.testing.assert_allclose(video_ae.psnr_per_frame(xf, rf), p, atol=1e-9)
  m = video_ae.video_metrics(x, rec)
  assert m['ae_psnr_first_frame'] == pytest.approx(100.0)
  assert m['ae_psnr_later_frames'] == pytest.approx(
      (-20 * np.log10(0.2)) / 2)
  assert m['ae_psnr_per_frame'] == pytest.approx(list(p.mean(0)))


def test_flicker_closed_forms():
  rng = np.random.default_rng(0)
  x = rng.uniform(-0.5, 0.5, (3, 5, 4, 4, 3))
  # A static error, however large, does not flicker.
  f = video_ae.flicker(x, x + 0.3)
  assert f['flicker'] == pytest.approx(0.0, abs=1e-12)
  assert f['flicker_ratio'] == pytest.approx(0.0, abs=1e-12)
  # Errors +d, -d, +d, ... (d = 0.1 in [-1, 1], 0.05 in [0, 1]) flip
  # sign every frame: flicker 2 * 0.05, the ratio's maximum 1.
  sign = np.array([1, -1, 1, -1, 1.0])[None, :, None, None, None]
  f = video_ae.flicker(x, x + 0.1 * sign)
  assert f['flicker'] == pytest.approx(0.1)
  assert f['flicker_ratio'] == pytest.approx(1.0)
  assert f['flicker_per_step'] == pytest.approx([0.1] * 4)
  motion = np.mean(np.abs(np.diff(x / 2, axis=1)))
  assert f['flicker_motion'] == pytest.approx(0.1 / motion)
  # Independent Gaussian errors: the documented 1/sqrt(2) baseline.
  x = np.zeros((64, 9, 16, 16, 3))
  e = rng.normal(0, 0.02, x.shape)
  assert video_ae.flicker(x, e)['flicker_ratio'] == pytest.approx(
      1 / np.sqrt(2), abs=0.01)
  with pytest.raises(UserError, match='same shape'):
    video_ae.flicker(x[:2], x[:3])


def _train(wd):
  flags.FLAGS.mark_as_parsed()  # absl logging without app.run.
  status = main_lib.cli(['visgen.main',
                         f'--config={ROOT}/configs/video_autoencoder.py:'
                         'runlocal', f'--workdir={wd}'])
  assert status == 0


@pytest.fixture(scope='module')
def workdir(build_once):
  # Trained once per run, shared by the xdist workers (read-only here).
  return build_once('video-autoencoder', _train)


def test_runlocal_trains_through_main_and_evaluates(workdir):
  with open(os.path.join(workdir, 'metrics.json')) as f:
    metrics = json.load(f)
  assert metrics['steps'] == 4 and np.isfinite(metrics['final_loss'])
  for k in ('ae_psnr', 'ae_psnr_first_frame', 'ae_flicker',
            'ae_flicker_ratio', 'latent_scale_factor'):
    assert np.isfinite(metrics[k]), k
  assert len(metrics['ae_psnr_per_frame']) == 5
  # What other code calls: the same clips and EMA params, the same numbers.
  out = video_ae.evaluate_workdir(workdir, n=8, batch=4)
  assert out['ae_step'] == 4 and out['ae_clips'] == 8
  for k in ('ae_psnr', 'ae_psnr_first_frame', 'ae_flicker'):
    assert out[k] == pytest.approx(metrics[k], rel=1e-6), k
  with pytest.raises(UserError, match='does not exist'):
    video_ae.evaluate_workdir(workdir + '_missing')
