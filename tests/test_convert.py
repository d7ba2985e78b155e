"""visgen.convert: diffusers AutoencoderKL -> autoencoder_kl."""

import json
import os

import ml_collections as mlc
import numpy as np
import pytest

from visgen import config_lib
from visgen import convert
from visgen import frozen as frozen_lib
from visgen import param_tree
from visgen import sharding
from visgen import weights as weights_lib
from visgen.convert import __main__ as convert_main
from visgen.convert import diffusers as conv_diffusers

CFG = {'_class_name': 'AutoencoderKL', 'in_channels': 3, 'out_channels': 3,
       'down_block_types': ['DownEncoderBlock2D'] * 3,
       'up_block_types': ['UpDecoderBlock2D'] * 3,
       'block_out_channels': [8, 16, 16], 'layers_per_block': 1,
       'act_fn': 'silu', 'latent_channels': 4, 'norm_num_groups': 4,
       'sample_size': 8, 'scaling_factor': 0.5, 'shift_factor': 0.25}


def diffusers_state_dict(cfg, rng, *, legacy_attention=False):
  """A state dict with diffusers AutoencoderKL's key names and PyTorch
  shapes, written from diffusers' module structure (Encoder / Decoder of
  DownEncoderBlock2D / UpDecoderBlock2D, UNetMidBlock2D, ResnetBlock2D,
  Attention), independently of the converter."""
  sd = {}

  def arr(*shape):
    return rng.standard_normal(shape).astype(np.float32)

  def conv(name, i, o, k):
    sd[name + '.weight'], sd[name + '.bias'] = arr(o, i, k, k), arr(o)

  def norm(name, c):
    sd[name + '.weight'], sd[name + '.bias'] = arr(c), arr(c)

  def lin(name, i, o):
    if legacy_attention:  # LDM-era 1x1 convs
      sd[name + '.weight'], sd[name + '.bias'] = arr(o, i, 1, 1), arr(o)
    else:
      sd[name + '.weight'], sd[name + '.bias'] = arr(o, i), arr(o)

  def resnet(p, i, o):
    norm(p + '.norm1', i)
    conv(p + '.conv1', i, o, 3)
    norm(p + '.norm2', o)
    conv(p + '.conv2', o, o, 3)
    if i != o:
      conv(p + '.conv_shortcut', i, o, 1)

  def mid(p, c):
    resnet(p + '.resnets.0', c, c)
    a = p + '.attentions.0.'
    norm(a + 'group_norm', c)
    names = (('query', 'key', 'value', 'proj_attn') if legacy_attention
             else ('to_q', 'to_k', 'to_v', 'to_out.0'))
    for n in names:
      lin(a + n, c, c)
    resnet(p + '.resnets.1', c, c)

  boc, layers = cfg['block_out_channels'], cfg['layers_per_block']
  z, cin = cfg['latent_channels'], cfg['in_channels']
  conv('encoder.conv_in', cin, boc[0], 3)
  prev = boc[0]
  for i, c in enumerate(boc):
    for j in range(layers):
      resnet(f'encoder.down_blocks.{i}.resnets.{j}', prev, c)
      prev = c
    if i < len(boc) - 1:
      conv(f'encoder.down_blocks.{i}.downsamplers.0.conv', c, c, 3)
  mid('encoder.mid_block', boc[-1])
  norm('encoder.conv_norm_out', boc[-1])
  conv('encoder.conv_out', boc[-1], 2 * z, 3)
  rev = boc[::-1]
  conv('decoder.conv_in', z, rev[0], 3)
  mid('decoder.mid_block', rev[0])
  prev = rev[0]
  for i, c in enumerate(rev):
    for j in range(layers + 1):
      resnet(f'decoder.up_blocks.{i}.resnets.{j}', prev, c)
      prev = c
    if i < len(rev) - 1:
      conv(f'decoder.up_blocks.{i}.upsamplers.0.conv', c, c, 3)
  norm('decoder.conv_norm_out', rev[-1])
  conv('decoder.conv_out', rev[-1], cin, 3)
  conv('quant_conv', 2 * z, 2 * z, 1)
  conv('post_quant_conv', z, z, 1)
  return sd


def _write(src, cfg, sd):
  os.makedirs(src, exist_ok=True)
  with open(os.path.join(src, 'config.json'), 'w') as f:
    json.dump(cfg, f)
  weights_lib.write_safetensors(
      os.path.join(src, conv_diffusers.WEIGHTS_FILE), sd)


def test_converted_tree_matches_the_port_exactly(tmp_path, capsys):
  sd = diffusers_state_dict(CFG, np.random.default_rng(0))
  src, out = str(tmp_path / 'src'), str(tmp_path / 'out')
  _write(src, CFG, sd)
  assert convert_main.main(['--from=diffusers', f'--src={src}',
                            f'--out={out}']) == 0
  assert 'parameters (autoencoder_kl)' in capsys.readouterr().out
  entry = convert.frozen_entry(out)
  model = dict(entry['model'])
  assert model['ch'] == 8 and model['ch_mult'] == [1, 2, 2]
  _, abstract = frozen_lib.abstract_model('ae', model)
  want = {k: tuple(v.shape) for k, v in param_tree.flatten(abstract).items()}
  got = weights_lib.read_safetensors(entry['source'].split(':', 1)[1])
  assert {k: v.shape for k, v in got.items()} == want
  assert len(got) == len(sd)
  # Layouts: conv OIHW -> HWIO, linear (out, in) -> (in, out), norm -> scale.
  k = 'encoder.down_blocks.1.resnets.0.conv_shortcut.weight'
  np.testing.assert_array_equal(
      got['encoder/down_blocks/1/resnets/0/conv_shortcut/kernel'],
      sd[k].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      got['decoder/mid_block/attentions/0/to_out/kernel'],
      sd['decoder.mid_block.attentions.0.to_out.0.weight'].T)
  np.testing.assert_array_equal(got['encoder/conv_norm_out/scale'],
                                sd['encoder.conv_norm_out.weight'])
  # Legacy attention names / 1x1-conv layout give the same tree.
  legacy = diffusers_state_dict(CFG, np.random.default_rng(0),
                                legacy_attention=True)
  conv_legacy = conv_diffusers.convert_autoencoder_kl(legacy)
  assert {k: v.shape for k, v in conv_legacy.items()} == want
  # Usable as a frozen component; the latent codec reads its statistics.
  c = mlc.ConfigDict()
  c.sharding = config_lib.mesh_and_sharding('dp')
  c.frozen = dict(autoencoder=entry)
  fz = frozen_lib.build_frozen(c, sharding.make_mesh(c.sharding.mesh))
  np.testing.assert_array_equal(
      np.asarray(param_tree.flatten(fz.params['autoencoder'])[
          'quant_conv/kernel']), sd['quant_conv.weight'].transpose(2, 3, 1, 0))
  from visgen.tasks import autoencoder as ae_task  # pylint: disable=g-import-not-at-top
  c.task = dict(latent=dict(frozen='autoencoder', image_shape=(8, 8, 3)))
  codec = ae_task.codec_from_config(c, fz.apply)
  assert float(codec.scale) == 0.5 and float(codec.shift) == 0.25


def test_bad_inputs_and_verify_without_torch(tmp_path, capsys):
  assert convert_main.main(['--from=diffusers', f'--src={tmp_path}/none',
                            f'--out={tmp_path}/o']) == 1
  assert 'config.json' in capsys.readouterr().err
  bad = dict(CFG, block_out_channels=[8, 12, 16])
  _write(str(tmp_path / 'bad'), bad, {})
  assert convert_main.main(['--from=diffusers', f'--src={tmp_path}/bad',
                            f'--out={tmp_path}/o']) == 1
  assert 'multiples' in capsys.readouterr().err
  sd = diffusers_state_dict(CFG, np.random.default_rng(1))
  del sd['decoder.conv_out.bias']
  _write(str(tmp_path / 'miss'), CFG, sd)
  assert convert_main.main(['--from=diffusers', f'--src={tmp_path}/miss',
                            f'--out={tmp_path}/o']) == 1
  assert 'decoder/conv_out/bias' in capsys.readouterr().err
  try:
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import diffusers  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    pytest.skip('torch and diffusers are installed')
  except ImportError:
    pass
  _write(str(tmp_path / 'ok'), CFG, diffusers_state_dict(
      CFG, np.random.default_rng(2)))
  assert convert_main.main(['--from=diffusers', f'--src={tmp_path}/ok',
                            f'--out={tmp_path}/o', '--verify']) == 2
  assert 'pip install torch diffusers' in capsys.readouterr().err


def test_verify_against_diffusers_on_a_random_small_model(tmp_path):
  torch = pytest.importorskip('torch')
  diffusers = pytest.importorskip('diffusers')
  torch.manual_seed(0)
  ref = diffusers.AutoencoderKL(
      in_channels=3, out_channels=3, down_block_types=CFG['down_block_types'],
      up_block_types=CFG['up_block_types'],
      block_out_channels=tuple(CFG['block_out_channels']),
      layers_per_block=1, latent_channels=4, norm_num_groups=4,
      sample_size=8)
  ref.save_pretrained(str(tmp_path / 'src'), safe_serialization=True)
  conv_diffusers.convert_dir(str(tmp_path / 'src'), str(tmp_path / 'out'))
  assert conv_diffusers.verify(str(tmp_path / 'src'),
                               str(tmp_path / 'out')) <= 1e-4
