"""visgen.convert: DiT (facebookresearch .pt, diffusers) and transformers
text models (BERT, CLIP) against their reference implementations' outputs.

The fixtures (tests/fixtures/convert, written by make_convert_fixtures.py
with torch, diffusers, transformers and facebookresearch/DiT's models.py)
are tiny random-weight reference checkpoints with the references' outputs
on fixed inputs (golden.npz): the suite checks the ports against them
without torch. With torch and the reference libraries installed the
importers' own --verify runs too.
"""

import json
import os
import pickle
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest

from visgen import convert
from visgen import weights as weights_lib
from visgen.convert import __main__ as convert_main
from visgen.convert import dit as conv_dit
from visgen.convert import transformers as conv_tf

FIX = os.path.join(os.path.dirname(__file__), 'fixtures', 'convert')
DIT_PT = os.path.join(FIX, 'dit_facebook', 'DiT-tiny.pt')


def rel_err(got, want):
  got, want = np.asarray(got), np.asarray(want)
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def golden(name):
  return dict(np.load(os.path.join(FIX, name, 'golden.npz')))


def run_dit(out, g):
  model, cfg = convert.load_converted(out)
  x = jnp.asarray(g['x'].transpose(0, 2, 3, 1))
  y = model(x, jnp.asarray(g['t'] / 1000.0),
            {'label': jnp.asarray(g['y'])})
  return np.asarray(y).transpose(0, 3, 1, 2), cfg


def test_torch_pt_reader_matches_the_state_dict_and_refuses_code(tmp_path):
  obj = weights_lib.read_torch_pt(DIT_PT)
  assert set(obj) == {'ema', 'args'} and obj['args']['model'] == 'DiT-tiny'
  sd = obj['ema']
  assert sd['x_embedder.proj.weight'].shape == (16, 4, 2, 2)
  assert sd['x_embedder.proj.weight'].dtype == np.float32
  # A pickle that would run code is refused, naming the global.
  bad = tmp_path / 'bad.pt'
  with zipfile.ZipFile(bad, 'w') as z:
    z.writestr('bad/data.pkl', b'cos\nsystem\n(S"true"\ntR.')
  with pytest.raises(pickle.UnpicklingError, match='os.system'):
    weights_lib.read_torch_pt(str(bad))
  (tmp_path / 'not.pt').write_bytes(b'not a zip')
  with pytest.raises(ValueError, match='not a PyTorch zip'):
    weights_lib.read_torch_pt(str(tmp_path / 'not.pt'))


def test_facebook_dit_matches_the_reference_outputs(tmp_path, capsys):
  out = str(tmp_path / 'dit')
  # The head count is not in the file: width 16 is no paper variant.
  assert convert_main.main(['--from=dit', f'--src={DIT_PT}',
                            f'--out={out}']) == 1
  assert '--heads' in capsys.readouterr().err
  assert convert_main.main(['--from=dit', f'--src={DIT_PT}', f'--out={out}',
                            '--heads=2']) == 0
  assert '(dit)' in capsys.readouterr().out
  got, cfg = run_dit(out, golden('dit_facebook'))
  assert cfg['learn_sigma'] and cfg['num_classes'] == 3 and cfg['depth'] == 2
  assert rel_err(got, golden('dit_facebook')['out']) <= 1e-4
  # Layouts: the patch conv (O, C, p, p) -> (p*p*C, O) tokens; qkv fused.
  sd = weights_lib.read_torch_pt(DIT_PT)['ema']
  flat = weights_lib.read_safetensors(os.path.join(out, convert.MODEL_FILE))
  np.testing.assert_array_equal(
      flat['x_embed/kernel'][(1 * 2 + 0) * 4 + 3],
      sd['x_embedder.proj.weight'][:, 3, 1, 0])
  np.testing.assert_array_equal(flat['blocks/1/attn/qkv/kernel'],
                                sd['blocks.1.attn.qkv.weight'].T)


def test_diffusers_dit_matches_the_reference_outputs(tmp_path):
  src, out = os.path.join(FIX, 'dit_diffusers'), str(tmp_path / 'dit')
  assert convert_main.main(['--from=diffusers', f'--src={src}',
                            f'--out={out}']) == 0
  got, cfg = run_dit(out, golden('dit_diffusers'))
  assert cfg['t_freq_shift'] == 1.0 and cfg['mlp_norm_eps'] == 1e-5
  assert rel_err(got, golden('dit_diffusers')['out']) <= 1e-4
  # The paper's constants instead give a different function: the two
  # constants are what the port reproduces, not an accident.
  model, _ = convert.load_converted(out)
  model.t_embed.freq_shift = 0.0
  g = golden('dit_diffusers')
  y = model(jnp.asarray(g['x'].transpose(0, 2, 3, 1)),
            jnp.asarray(g['t'] / 1000.0), {'label': jnp.asarray(g['y'])})
  assert rel_err(np.asarray(y).transpose(0, 3, 1, 2), g['out']) > 1e-3


def test_diffusers_dit_with_per_block_embedders_is_refused(tmp_path):
  src = os.path.join(FIX, 'dit_diffusers')
  arrays = weights_lib.read_safetensors(
      os.path.join(src, 'diffusion_pytorch_model.safetensors'))
  k = 'transformer_blocks.1.norm1.emb.timestep_embedder.linear_1.bias'
  arrays[k] = arrays[k] + 1.0
  with pytest.raises(ValueError, match='per-block embedders'):
    conv_dit.convert_diffusers(arrays)


@pytest.mark.parametrize('name', ['bert', 'clip'])
def test_transformers_text_models_match_the_reference_outputs(name,
                                                              tmp_path):
  out = str(tmp_path / name)
  assert convert_main.main(['--from=transformers',
                            f'--src={os.path.join(FIX, name)}',
                            f'--out={out}']) == 0
  model, cfg = convert.load_converted(out)
  g = golden(name)
  hidden, pooled = model(jnp.asarray(g['ids']), jnp.asarray(g['mask']))
  valid = g['mask']
  assert rel_err(np.asarray(hidden)[valid], g['hidden'][valid]) <= 1e-4
  if name == 'clip':
    assert cfg['proj_dim'] == 8 and cfg['eos_token_id'] == 39
    assert rel_err(pooled, g['pooled']) <= 1e-4
  else:  # mean over unpadded tokens, L2-normalised
    m = valid[..., None]
    want = (g['hidden'] * m).sum(1) / m.sum(1)
    want /= np.linalg.norm(want, axis=-1, keepdims=True)
    assert rel_err(pooled, want) <= 1e-4
  # Usable as a frozen component: the entry reads the directory.
  entry = convert.frozen_entry(out)
  assert entry['model']['name'] == cfg['name']


def test_transformers_bad_inputs(tmp_path, capsys):
  assert convert_main.main(['--from=transformers', f'--src={tmp_path}',
                            f'--out={tmp_path}/o']) == 1
  assert 'config.json' in capsys.readouterr().err
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump({'model_type': 't5'}, f)
  weights_lib.write_safetensors(str(tmp_path / 'model.safetensors'),
                                {'x': np.zeros(2, np.float32)})
  assert convert_main.main(['--from=transformers', f'--src={tmp_path}',
                            f'--out={tmp_path}/o']) == 1
  assert "'t5'" in capsys.readouterr().err


def test_shipped_runlocal_vae_is_the_converted_fixture(tmp_path):
  """configs/dit_imagenet.py:runlocal's autoencoder (vae_visgen) is what
  visgen.convert makes of the diffusers fixture today."""
  out = str(tmp_path / 'vae')
  assert convert_main.main(['--from=diffusers',
                            f'--src={os.path.join(FIX, "vae")}',
                            f'--out={out}']) == 0
  shipped = os.path.join(FIX, 'vae_visgen')
  for f in ('config.json', 'latent_stats.json'):
    with open(os.path.join(out, f)) as a, open(os.path.join(shipped, f)) as b:
      ja, jb = json.load(a), json.load(b)
      ja.pop('converted_from', None), jb.pop('converted_from', None)
      assert ja == jb
  a = weights_lib.read_safetensors(os.path.join(out, convert.MODEL_FILE))
  b = weights_lib.read_safetensors(os.path.join(shipped, convert.MODEL_FILE))
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])


# -- With torch and the reference libraries: the importers' --verify --------


def test_verify_diffusers_dit_and_transformers_with_torch(tmp_path):
  pytest.importorskip('torch')
  pytest.importorskip('diffusers')
  pytest.importorskip('transformers')
  from visgen.convert import diffusers as conv_diffusers  # pylint: disable=g-import-not-at-top
  src = os.path.join(FIX, 'dit_diffusers')
  conv_diffusers.convert_dir(src, str(tmp_path / 'd'))
  assert conv_diffusers.verify(src, str(tmp_path / 'd')) <= 1e-4
  for name in ('bert', 'clip'):
    conv_tf.convert_dir(os.path.join(FIX, name), str(tmp_path / name))
    assert conv_tf.verify(os.path.join(FIX, name),
                          str(tmp_path / name)) <= 1e-4


def test_verify_facebook_dit_with_torch_and_the_repository(tmp_path):
  pytest.importorskip('torch')
  pytest.importorskip('timm')
  repo = os.environ.get('DIT_REPO')
  if not repo:
    pytest.skip('set DIT_REPO to a clone of facebookresearch/DiT')
  conv_dit.convert_dir(DIT_PT, str(tmp_path / 'f'), heads=2)
  assert conv_dit.verify(DIT_PT, str(tmp_path / 'f'), reference=repo) <= 1e-4
