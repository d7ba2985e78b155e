"""Control, instruction editing and bridges (issue 12): ControlNet equals its
frozen base bit for bit at initialisation and trains only its own
parameters; InstructPix2Pix's dual guidance is the paper's combination
exactly and its dropout is the paper's; a bridge pair's x_t is pinned at
both ends and its source reaches the sampler; the three tasks meet the
contract; bad inputs fail with messages naming the problem."""

import os

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from visgen import builder
from visgen import config_loader
from visgen import models
from visgen import param_tree
from visgen import warm_start
from visgen import weights as weights_lib
from visgen.models import controlnet as cn_lib
from visgen.samplers import guidance
from visgen.tasks import base as task_base
from visgen.tasks import bridge
from visgen.tasks import image_cond
from visgen.tasks import instruct_edit
from visgen.validate import UserError

TINY_DIT = dict(name='dit', input_size=8, patch=2, width=16, depth=2,
                heads=2, num_classes=4)


def _perturbed(params, seed=1, scale=0.1):
  """Every parameter moved off its initialisation (zero-init output layers
  would hide a wrong residual)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [
      x + scale * jax.random.normal(k, x.shape, x.dtype)
      for x, k in zip(leaves, keys)])


def _scene_batch(b, size=8, seed=0):
  rng = np.random.default_rng(seed)
  edges = np.where(rng.random((b, size, size, 1)) < 0.3, 255, 0)
  return {'image': rng.integers(0, 256, (b, size, size, 3), np.uint8),
          'label': np.arange(b, dtype=np.int32) % 4,
          'edges': edges.astype(np.uint8)}


# ----------------------------------------------------------------------------
# ControlNet through the builder: frozen base, warm start, one train step.
# ----------------------------------------------------------------------------


@pytest.fixture(scope='module')
def cn_run(tmp_path_factory):
  """A built ControlNet run over a perturbed tiny base saved as .npz, its
  warm-started state, and the host copy of the base."""
  tmp = tmp_path_factory.mktemp('cn')
  c = config_loader.load('configs/controlnet_shapes.py:runlocal')
  base_cfg = dict(c.model.base)
  kw = dict(base_cfg)
  kw.pop('name')
  kw['dtype'] = jnp.float32
  base_params = _perturbed(models.split_model(models.get_model(
      'unet', rngs=nnx.Rngs(0), **kw))[1])
  path = str(tmp / 'base.npz')
  weights_lib.save_npz(path, base_params)
  c.frozen.base.source = 'npz:' + path
  c.init_from.source = 'npz:' + path
  c.optim.warmup_steps = 0  # the first step must move the parameters
  b = builder.build(c)
  state = warm_start.maybe_warm_start(
      builder.create_state(b, jax.random.key(0)), c)
  return c, b, state, param_tree.flatten(jax.device_get(base_params))


def test_controlnet_copy_warm_started_and_equal_to_base_at_init(cn_run):
  _, b, state, base_flat = cn_run
  task = task_base.check_task(b.task)
  flat = param_tree.flatten(state['params'])
  # The copy starts as the base's encoder; the new layers are zero.
  for p in ('conv_in/kernel', 'down/0/0/conv1/kernel', 'mid/0/conv2/kernel',
            't_embed/fc1/kernel', 'y_embed/table'):
    np.testing.assert_array_equal(flat[p], base_flat[p])
  for p, v in flat.items():
    if p.startswith('zero_'):
      assert not np.any(np.asarray(v)), p
  batch = _scene_batch(4)
  cond = task.eval_cond(batch)
  x = jax.random.normal(jax.random.key(3), (4, 8, 8, 3))
  t = jnp.array([0.1, 0.4, 0.7, 0.95])
  frozen = b.frozen.params

  @jax.jit
  def both(params, frozen, x, t, cond):
    return (task.network(params, frozen)(x, t, cond),
            task.base_network(frozen)(x, t, cond),
            task.network(params, frozen, control_scale=0.0)(x, t, cond))

  controlled, plain, scale0 = both(state['params'], frozen, x, t, cond)
  assert float(jnp.std(plain)) > 1e-3  # the base is not trivially zero
  np.testing.assert_array_equal(np.asarray(controlled), np.asarray(plain))
  np.testing.assert_array_equal(np.asarray(scale0), np.asarray(plain))


def test_controlnet_step_changes_only_control_params(cn_run):
  c, b, state, base_flat = cn_run
  step = builder.make_train_step(b)
  before = param_tree.flatten(jax.device_get(state['params']))
  batch = jax.tree.map(jnp.asarray, _scene_batch(c.data.batch_size))
  new, metrics = step(jax.tree.map(jnp.copy, state), b.frozen.params,
                      batch, jax.random.key(5))
  assert np.isfinite(float(metrics['loss']))
  after = param_tree.flatten(jax.device_get(new['params']))
  changed = sorted(p for p in after
                   if not np.array_equal(after[p], before[p]))
  # The zero projections receive gradient at the first step.
  assert any(p.startswith('zero_down/') for p in changed), changed
  assert 'zero_mid/kernel' in changed
  # The base is a frozen component: bit-identical, and not in the state.
  frozen = param_tree.flatten(jax.device_get(b.frozen.params['base']))
  for p, v in base_flat.items():
    np.testing.assert_array_equal(frozen[p], v)
  assert set(after) == set(before)
  assert not any(p.startswith(('up/', 'conv_out/', 'norm_out/'))
                 for p in after)


def test_controlnet_bad_control_maps(cn_run):
  _, b, state, _ = cn_run
  task = b.task
  batch = _scene_batch(2)
  with pytest.raises(UserError, match=r"'edges' has shape \(2, 16, 16, 1\)"
                     r".*expected \(B, 8, 8, 1\)"):
    task.cond(dict(batch, edges=np.zeros((2, 16, 16, 1), np.uint8)), None)
  with pytest.raises(UserError, match="reads batch entry 'edges'"):
    task.cond({'image': batch['image'], 'label': batch['label']}, None)
  cond = task.eval_cond(batch)
  with pytest.raises(ValueError, match=r'control map of shape \(B, 8, 8, 1'
                     r'\).*got \(2, 8, 8, 3\)'):
    task.sample(state['params'], b.frozen.params,
                dict(cond, control=jnp.zeros((2, 8, 8, 3))),
                jax.random.key(0), n=2)


def test_controlnet_media_and_held_out_conditions(cn_run):
  _, b, _, _ = cn_run
  cond = b.task.sample_cond(3)
  assert cond['control'].shape == (3, 8, 8, 1) and cond['label'].shape == (3,)
  assert set(np.unique(cond['control'])) <= {-1.0, 1.0}
  m = b.task.to_media(np.zeros((3, 8, 8, 3), np.float32), cond)
  assert m.condition.shape == (3, 8, 8, 3) and m.condition.dtype == np.uint8


def test_dit_controlnet_equal_at_init_and_residual_sum():
  kw = dict(TINY_DIT)
  kw.pop('name')
  g, p = models.split_model(models.get_model('dit', rngs=nnx.Rngs(0), **kw))
  p = _perturbed(p)
  gc, pc = models.split_model(cn_lib.ControlNet(
      rngs=nnx.Rngs(1), base=TINY_DIT, hint_channels=1, num_blocks=1))
  names = list(param_tree.flatten(pc))
  assert 'blocks/0/ada/kernel' in names and 'blocks/1/ada/kernel' not in names
  base, ctrl = models.make_apply(g), models.make_apply(gc)
  x = jax.random.normal(jax.random.key(2), (2, 8, 8, 3))
  t = jnp.array([0.3, 0.8])
  cond = {'label': jnp.array([0, 3]), 'control': jnp.ones((2, 8, 8, 1))}

  @jax.jit
  def outputs(p, pc):
    r = ctrl(pc, x, t, cond)
    return r, base(p, x, t, cond, **cn_lib.base_kwargs(r)), base(p, x, t,
                                                                 cond)

  r, controlled, plain = outputs(p, pc)
  np.testing.assert_array_equal(np.asarray(controlled), np.asarray(plain))
  # Several controls: the sum of the scaled residuals.
  r2 = jax.tree.map(lambda a: a + 1.0, r)
  both = cn_lib.combine([r, r2], [0.5, 2.0])
  np.testing.assert_allclose(both['blocks'][0],
                             0.5 * r['blocks'][0] + 2.0 * r2['blocks'][0])


# ----------------------------------------------------------------------------
# InstructPix2Pix.
# ----------------------------------------------------------------------------


def test_dual_cfg_is_the_papers_combination_exactly():
  w = jax.random.normal(jax.random.key(0), (3,))

  def den(x, t, c):  # depends on every condition, nonlinearly
    return (jnp.tanh(x * w + c['concat'] * 2.0)
            + jnp.sin(c['tok'][:, :1, None, None] * 0.7)
            + t[:, None, None, None])

  x = jax.random.normal(jax.random.key(1), (2, 4, 4, 3))
  t = jnp.array([0.2, 0.9])
  cond = {'concat': jax.random.normal(jax.random.key(2), (2, 4, 4, 3)),
          'tok': jnp.array([[3, 1], [5, 2]])}
  no_img = lambda c: dict(c, concat=jnp.zeros_like(c['concat']))
  no_txt = lambda c: dict(c, tok=jnp.zeros_like(c['tok']))
  s_i, s_t = 1.5, 7.5

  @jax.jit
  def outputs(x, t, cond):
    out = guidance.dual_cfg(den, image_scale=s_i, text_scale=s_t,
                            null_image=no_img, null_text=no_txt)(x, t, cond)
    one = guidance.dual_cfg(den, image_scale=1.0, text_scale=1.0,
                            null_image=no_img, null_text=no_txt)(x, t, cond)
    e_full = den(x, t, cond)
    e_img = den(x, t, no_txt(cond))
    e_0 = den(x, t, no_img(no_txt(cond)))
    want = e_0 + s_i * (e_img - e_0) + s_t * (e_full - e_img)
    return out, want, one, e_full

  out, want, one, e_full = outputs(x, t, cond)
  np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=0,
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(one), np.asarray(e_full), atol=1e-5)


@pytest.fixture(scope='module')
def ip2p():
  c = config_loader.load('configs/ip2p_shapes.py:runlocal')
  return c, instruct_edit.InstructEditTask(c)


def test_ip2p_contract_dropout_and_missing_source(ip2p):
  c, task = ip2p
  task_base.check_task(task)
  ex = image_cond.heldout_examples(c, 4)
  assert set(task.batch_spec(4)) == set(task.batch_keys)
  cond = task.eval_cond(ex)
  assert cond['concat'].shape == (4, 8, 8, 3)
  assert cond['instruction_tokens'].shape == (4, 10)
  assert np.all(np.asarray(cond['instruction_tokens'])[:, 0] > 0)
  # Dropout: image only, text only, both, 5% each, per example.
  n = 40_000
  concat = jnp.ones((n, 1, 1, 1))
  tokens = jnp.ones((n, 2), jnp.int32)
  ci, ti = task.drop(jax.random.key(0), concat, tokens)
  img, txt = np.asarray(ci[:, 0, 0, 0] == 0), np.asarray(ti[:, 0] == 0)
  assert np.all((ci == 0) | (ci == 1)) and np.all((ti == 0) | (ti == 1))
  for frac in (np.mean(img & ~txt), np.mean(~img & txt), np.mean(img & txt)):
    assert abs(frac - 0.05) < 0.005, frac
  with pytest.raises(UserError, match="no edit source 'image'"):
    task.cond({k: v for k, v in ex.items() if k != 'image'}, None)
  m = task.to_media(np.zeros((4, 8, 8, 3), np.float32), cond)
  assert m.condition.shape == (4, 8, 8, 3)


def test_ip2p_warm_start_mapping_zero_extra_channels(ip2p):
  from visgen.models import instruct  # pylint: disable=g-import-not-at-top
  del ip2p
  c = config_loader.load('configs/ip2p_shapes.py:runlocal,xattn=False')
  kw = dict(c.model)
  kw.pop('name')
  params = models.split_model(models.get_model(
      'instruct_unet', rngs=nnx.Rngs(0), **kw))[1]
  flat = param_tree.flatten(params)
  plan = warm_start.plan(list(flat), instruct.INIT_MAPPING)
  assert plan['unet/conv_in/kernel'] == 'conv_in/kernel'
  assert not any(p.startswith(('unet/concat_in/', 'text/')) for p in plan)
  k = flat['unet/concat_in/kernel']
  assert k.shape[2] == c.model.unet.patch ** 2 * 3 and not np.any(np.asarray(k))


def test_ip2p_edit_weight_source_skip_and_cross_attention():
  """The edit-weighted loss is the hand-computed weighted MSE; the source
  skip returns source + U-Net output; cross-attention reads the
  instruction; misuse of the options fails with the fix."""
  from visgen.models import functional  # pylint: disable=g-import-not-at-top
  from visgen.models import instruct  # pylint: disable=g-import-not-at-top
  from visgen.objectives import predictions  # pylint: disable=g-import-not-at-top

  c = config_loader.load('configs/ip2p_shapes.py:runlocal,prediction=x0,'
                         'skip=True,xattn=True,edit_weight=5')
  model = models.get_model('instruct_unet', rngs=nnx.Rngs(0), **{
      k: v for k, v in dict(c.model).items() if k != 'name'})
  assert model.cross and model.source_skip
  graphdef, params = functional.split_model(model)
  # Perturb every weight (zero-initialised projections included).
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(treedef, [
      a + 0.05 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
  # Warm start from a base U-Net: the instruction encoder and the
  # cross-attention are new (not copied), as the concat projection.
  plan = warm_start.plan(list(param_tree.flatten(params)),
                         instruct.XATTN_INIT_MAPPING)
  assert 'unet/conv_in/kernel' in plan and not any(
      '/cross/' in p or p.startswith(('unet/text/', 'text/',
                                      'unet/concat_in/')) for p in plan)
  apply = functional.make_apply(graphdef)
  task = instruct_edit.InstructEditTask(c, apply=apply)
  assert 'edit_mask' in task.batch_keys
  assert set(task.batch_spec(4)) == set(task.batch_keys)
  ex = image_cond.heldout_examples(c, 4)
  batch = {k: jnp.asarray(ex[k]) for k in task.batch_keys}
  key = jax.random.key(3)
  loss, _, _ = task.loss(params, {}, {}, batch, key)
  # The same loss by hand: the task's own draws, weight 5 on the mask.
  k_drop, k_loss, _ = jax.random.split(key, 3)
  x0 = task.to_x0(batch)
  cond = task.cond(batch, k_drop)
  k_t, k_eps = jax.random.split(k_loss)
  t, _ = task.time_dist.sample(k_t, 4, path=task.path)
  eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
  x_t = task.path.sample_xt(x0=x0, eps=eps, t=t)
  pred = apply(params, x_t, t, cond)
  tgt = predictions.target('x0', x0=x0, eps=eps, t=t, path=task.path)
  wmap = 1 + 4 * (np.asarray(ex['edit_mask'], np.float32) / 255)
  mse = np.mean((wmap * (np.asarray(pred) - np.asarray(tgt)) ** 2
                 ).reshape(4, -1), -1)
  w = np.asarray(task.weighting(t=t, path=task.path, kind='x0'))
  np.testing.assert_allclose(float(loss), float(np.mean(w * mse)),
                             rtol=1e-4)
  # Cross-attention reads the instruction: with the pooled instruction
  # embedding silenced, two instructions still give different outputs.
  net = nnx.merge(graphdef, params)
  net.text.fc2.kernel[...] = jnp.zeros_like(net.text.fc2.kernel[...])
  net.text.fc2.bias[...] = jnp.zeros_like(net.text.fc2.bias[...])
  cond = task.eval_cond(ex)
  swapped = dict(cond, instruction_tokens=cond['instruction_tokens'][::-1])
  t4 = jnp.full((4,), 0.5)
  xt = jax.random.normal(jax.random.key(2), (4, 8, 8, 3))
  assert not np.allclose(np.asarray(net(xt, t4, cond)),
                         np.asarray(net(xt, t4, swapped)), atol=1e-4)
  # Source skip: with the U-Net's output layer at zero, x0 = the source.
  net.unet.conv_out.kernel[...] = jnp.zeros_like(
      net.unet.conv_out.kernel[...])
  net.unet.conv_out.bias[...] = jnp.zeros_like(net.unet.conv_out.bias[...])
  np.testing.assert_allclose(np.asarray(net(xt, t4, cond)),
                             np.asarray(cond['concat']), atol=1e-6)
  with pytest.raises(UserError, match="only means something for "
                     "prediction='x0'"):
    instruct_edit.InstructEditTask(config_loader.load(
        'configs/ip2p_shapes.py:runlocal,prediction=velocity,skip=True'))
  with pytest.raises(UserError, match='edit_weight must be >= 1'):
    instruct_edit.InstructEditTask(config_loader.load(
        'configs/ip2p_shapes.py:runlocal,edit_weight=0.5'))
  with pytest.raises(ValueError, match='concat_channels .* must equal'):
    instruct.InstructUNet(rngs=nnx.Rngs(0), unet=dict(
        c.model.unet, concat_channels=1), source_skip=True)


# ----------------------------------------------------------------------------
# Bridges.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('path', ['bridge_vp', 'bridge_ve'])
def test_bridge_pairs_are_pinned_at_both_ends(path):
  c = config_loader.load(f'configs/ddbm_shapes.py:runlocal,path={path}')
  task = task_base.check_task(bridge.BridgeTask(c))
  assert task.is_bridge and set(task.batch_spec(2)) == set(task.batch_keys)
  batch = _scene_batch(3)
  x0, y = task.to_x0(batch), task.source(batch)
  # Edges rendered as a grey 3-channel image in [-1, 1].
  np.testing.assert_array_equal(np.asarray(y[..., 0]),
                                batch['edges'][..., 0] / 127.5 - 1.0)
  eps = jax.random.normal(jax.random.key(0), x0.shape)
  np.testing.assert_array_equal(
      np.asarray(task.x_t(x0, y, jnp.ones(3), eps)), np.asarray(y))
  np.testing.assert_array_equal(
      np.asarray(task.x_t(x0, y, jnp.zeros(3), eps)), np.asarray(x0))


def test_bridge_source_reaches_loss_and_sampler():
  c = config_loader.load('configs/ddbm_shapes.py:runlocal')

  def oracle(params, x_t, t, cond, **kw):  # predicts x0 = the source
    del params, t, kw
    return cond['concat'] * jnp.ones_like(x_t)

  task = bridge.BridgeTask(c, apply=oracle)
  batch = jax.tree.map(jnp.asarray, _scene_batch(2))

  @jax.jit
  def run(batch, key):
    _, aux, _ = task.loss({}, {}, {}, batch, key)
    x, info = task.sample({}, {}, task.eval_cond(batch), key, n=2,
                          return_info=True)
    return aux['mse'], x, info['nfe']

  mse, x, nfe = run(batch, jax.random.key(0))
  y = task.source(batch)
  # x0-prediction of the source: the loss is the source-target distance
  # (so y reached the network), and the sampler ends at the prediction.
  want = np.mean((np.asarray(y) - np.asarray(task.to_x0(batch))) ** 2,
                 axis=(1, 2, 3))
  np.testing.assert_allclose(np.asarray(mse), want, rtol=1e-5)
  assert int(nfe) == 3 * c.sampler.steps + 1
  np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)


def test_bridge_errors_name_the_missing_source():
  c = config_loader.load('configs/ddbm_shapes.py:runlocal')
  del c.task['source']
  with pytest.raises(UserError, match=r'config\.task\.source'):
    bridge.BridgeTask(c)
  c = config_loader.load('configs/ddbm_shapes.py:runlocal')
  task = bridge.BridgeTask(c)
  batch = _scene_batch(2)
  del batch['edges']
  with pytest.raises(UserError, match="reads batch entry 'edges'"):
    task.loss({}, {}, {}, batch, jax.random.key(0))
  c = config_loader.load('configs/ddbm_shapes.py:runlocal')
  c.model.concat_channels = 0
  with pytest.raises(UserError, match='concat_channels=3'):
    bridge.BridgeTask(c)


def test_runlocal_random_base_is_announced(tmp_path, monkeypatch):
  from visgen import config_lib  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('VISGEN_CACHE', str(tmp_path))
  config_lib.pop_notes()
  c = config_loader.load('configs/controlnet_shapes.py:runlocal')
  assert c.frozen.base.source.startswith('npz:' + str(tmp_path))
  assert os.path.exists(c.frozen.base.source[4:])
  assert any('RANDOMLY INITIALISED' in n for n in config_lib.pop_notes())


def test_control_maps_of_each_kind():
  kps = np.zeros((1, 3, 5, 2), np.float32)
  valid = np.zeros((1, 3, 5), bool)
  kps[0, 1, 2] = (3.5, 2.5)  # the centre of pixel (row 2, column 3)
  valid[0, 1, 2] = True
  kps[0, 0, 0] = (6.5, 6.5)  # invalid: must not show
  m = np.asarray(image_cond.control_map(
      {'keypoints': kps, 'keypoint_valid': valid}, 'keypoints', 8))
  assert m.shape == (1, 8, 8, 1) and m[0, 2, 3, 0] == 1.0
  assert np.unravel_index(np.argmax(m[0, ..., 0]), (8, 8)) == (2, 3)
  assert m[0, 6, 6, 0] < -0.99
  sem = np.zeros((1, 8, 8, 1), np.uint8)
  sem[0, :4] = 3
  onehot = image_cond.control_map({'semantic_mask': sem}, 'semantic_mask', 8)
  assert onehot.shape == (1, 8, 8, 5)
  img = image_cond.to_uint8(np.asarray(onehot), 'semantic_mask')
  np.testing.assert_array_equal(img[0, 0, 0], image_cond.MASK_PALETTE[3])
  np.testing.assert_array_equal(img[0, 7, 7], image_cond.MASK_PALETTE[0])


def test_edit_scores_strict_and_object_level():
  """Real edits score 1 and the identity 0 under both criteria; a background
  shade moved across half a palette step fails only the strict parse;
  changing another object fails both."""
  from experiments import control_editing as ce  # pylint: disable=g-import-not-at-top
  from visgen.data import shapes  # pylint: disable=g-import-not-at-top
  from visgen.data import shapes_edit  # pylint: disable=g-import-not-at-top

  src = shapes_edit.ShapesEditSource(split='test', resolution=16)
  ex = [src[i] for i in range(40)]
  img, tgt, mask, inst = (np.stack([e[k] for e in ex]) for k in (
      'image', 'edited_image', 'edit_mask', 'instance_mask'))
  for objects in (False, True):
    assert ce.edit_scores(tgt, img, tgt, mask, objects=objects)[0] == 1.0
    assert ce.edit_scores(img, img, tgt, mask, objects=objects)[0] == 0.0
  # Background pixels outside the edit mask nudged to the midpoint between
  # two background colours plus a little: the strict parse flips them, the
  # object-level one still reads background.
  bg = (inst[..., 0] == 0) & (mask[..., 0] == 0)
  mid = (shapes.BG_VALUES[2] + shapes.BG_VALUES[3]) / 2 + 8  # gray/light
  shaded = tgt.copy()
  shaded[bg] = np.round(mid).astype(np.uint8)
  flipped = ce.parse_colours(shaded[bg][None])[0]
  assert np.all(flipped == len(shapes.COLOUR_NAMES) + 3)  # light gray
  strict, _ = ce.edit_scores(shaded, img, tgt, mask)
  obj, _ = ce.edit_scores(shaded, img, tgt, mask, objects=True)
  assert obj == 1.0 and strict < 1.0
  # Another object recoloured (outside the edit mask): wrong for both.
  other = (inst[..., 0] > 0) & (mask[..., 0] == 0)
  big = other.sum((1, 2)) > 0.05 * (mask[..., 0] == 0).sum((1, 2))
  assert big.sum() >= 5
  wrong = tgt.copy()
  for i in np.flatnonzero(big):
    colour = wrong[i][other[i]][0]
    new = shapes.COLOUR_VALUES[(np.flatnonzero(
        (shapes.COLOUR_VALUES == colour).all(-1))[0] + 1) % 6]
    wrong[i][other[i]] = new
  for objects in (False, True):
    ok, _ = ce.edit_scores(wrong[big], img[big], tgt[big], mask[big],
                           objects=objects)
    assert ok == 0.0


def test_criterion_check_and_halves():
  """On the true targets plus a few grey levels of noise the object-level
  criterion stays at 1 and the strict one drops (gradient backgrounds);
  each success rate is at most both of its halves' pass rates."""
  from experiments import control_editing as ce  # pylint: disable=g-import-not-at-top
  from visgen.data import shapes_edit  # pylint: disable=g-import-not-at-top

  src = shapes_edit.ShapesEditSource(split='test', resolution=16)
  ex = [src[i] for i in range(64)]
  img, tgt, mask = (np.stack([e[k] for e in ex]) for k in (
      'image', 'edited_image', 'edit_mask'))
  rows = ce.criterion_check(img, tgt, mask, sigmas=(0, 8))
  assert rows[0]['edit_success'] == rows[0]['edit_success_objects'] == 1.0
  assert rows[0]['preservation_psnr'] > 100
  noisy = rows[1]
  assert noisy['edit_success_objects'] == 1.0
  assert noisy['edit_success'] < 0.9
  assert 28 < noisy['preservation_psnr'] < 32  # sigma 8: 30.0 dB
  for s in ('', '_objects'):
    assert noisy['edit_success' + s] <= min(noisy['inside_ok' + s],
                                           noisy['outside_ok' + s])
  ident = ce.edit_metrics(img, img, tgt, mask)
  assert ident['edit_success'] == 0.0 and ident['inside_ok'] == 0.0
  assert ident['outside_ok'] == 1.0
