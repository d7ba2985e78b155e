"""The shapes_world world model: exact data and metric checks against the
world's ground truth, action conditioning in the video DiT (full forward =
block rollout), the runlocal config trained through visgen.main, the
`python -m visgen.world` CLI (GIF, errors), the evaluation and the HTTP
server round trip.

One tiny workdir (configs/world_shapes.py:runlocal, 3 steps) is trained
once per module; everything after reads it as a user would.
"""

import http.client
import importlib.util
import io
import json
import os
import threading

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from visgen import main as main_lib
from visgen import world as world_cli
from visgen import world_server
from visgen.data import shapes_world
from visgen.evaluators import world_metrics
from visgen.tasks import base
from visgen.tasks import world_model
from visgen.validate import UserError

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


def _config(arg='runlocal'):
  path = os.path.join(ROOT, 'configs', 'world_shapes.py')
  spec = importlib.util.spec_from_file_location('configs.world_shapes', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _train(wd):
  flags.FLAGS.mark_as_parsed()  # absl logging without app.run.
  status = main_lib.cli(['visgen.main',
                         f'--config={ROOT}/configs/world_shapes.py:runlocal',
                         f'--workdir={wd}'])
  assert status == 0


@pytest.fixture(scope='module')
def workdir(build_once):
  # Trained once per run, shared by the xdist workers (read-only here).
  return build_once('world', _train)


@pytest.fixture(scope='module')
def wm(workdir):
  return world_cli.WorldModel(workdir)


# -- Ground truth: data and metric -------------------------------------------


def test_phase_correlation_recovers_world_shifts_exactly():
  # Views with at least 20% object pixels (a view of bare background has
  # nothing to lock onto): the action shifts at 16x16, any shift up to a
  # quarter of the view at 32x32.
  cases = {16: [(0, 0), (4, 0), (-4, 0), (0, 4), (0, -4)],
           32: [(dx, dy) for dx in (-8, -4, -1, 0, 2, 4, 8)
                for dy in (-8, -4, 0, 3, 4, 8)]}
  for res, shifts in cases.items():
    src = shapes_world.ShapesWorldSource(split='test', resolution=res)
    checked = 0
    for index in range(6):
      w = src.world(index)
      rng = np.random.default_rng(index)
      for _ in range(6):
        cam = rng.integers(8, w.size - res - 8, size=2)
        if np.mean(w.view_semantic(cam) > 0) < 0.2:
          continue
        for d in shifts:
          a, b = w.view(cam), w.view(cam + np.asarray(d))
          assert world_metrics.estimate_shift(a, b) == d, (res, cam, d)
          checked += 1
    assert checked >= 10 * len(shifts)


def test_commanded_shift_is_world_step():
  w = shapes_world.ShapesWorldSource(split='test', resolution=16).world(1)
  cam = np.asarray([20, 24])
  for a in range(len(shapes_world.ACTIONS)):
    np.testing.assert_array_equal(
        w.step(cam, a) - cam, world_metrics.commanded_shift(a, w.step_px))
  frames = np.stack([w.view(cam), w.view(w.step(cam, 4))])
  np.testing.assert_array_equal(
      world_metrics.action_errors(frames, [4], w.step_px), [0.0])
  np.testing.assert_allclose(
      world_metrics.action_errors(frames, [3], w.step_px), [8.0])
  assert world_metrics.psnr(frames[0], frames[0]) == float('inf')


def test_action_data_next_frame_is_world_ground_truth():
  src = shapes_world.ShapesWorldSource(split='train', resolution=16,
                                       num_frames=8, persistence=0.5)
  plain = shapes_world.ShapesWorldSource(split='train', resolution=16,
                                         num_frames=8)
  repeats = []
  for i in range(40):
    ex = src[i]
    w = src.world(i)
    for t, a in enumerate(ex['actions']):
      cam = w.step(ex['camera'][t], a)
      np.testing.assert_array_equal(cam, ex['camera'][t + 1])
      np.testing.assert_array_equal(ex['video'][t + 1], w.view(cam))
    repeats.append(np.mean(ex['actions'][1:] == ex['actions'][:-1]))
    np.testing.assert_array_equal(ex['camera'][0], plain[i]['camera'][0])
  # Repeat rate 0.5 + 0.5 / 5 = 0.6 with persistence, 0.2 without.
  assert 0.5 < np.mean(repeats) < 0.7
  with pytest.raises(ValueError, match='persistence'):
    shapes_world.ShapesWorldSource(persistence=1.5)


# -- Task and model -----------------------------------------------------------


def test_world_task_cond_and_per_frame_action_dropout():
  c = _config()
  task = base.check_task(world_model.WorldModelTask(c))
  assert task.batch_keys == ('video', 'actions')
  assert task.batch_spec(2)['actions'].shape == (2, 3)
  rng = np.random.default_rng(0)
  video = jnp.asarray(rng.integers(0, 256, (64, 4, 8, 8, 3)), jnp.uint8)
  actions = jnp.asarray(rng.integers(0, 5, (64, 3)), jnp.int32)
  batch = {'video': video, 'actions': actions}
  cond = task.cond(batch, None)
  np.testing.assert_array_equal(cond['actions'][:, 0], 5)  # null before 0
  np.testing.assert_array_equal(cond['actions'][:, 1:], actions)
  clip = task.clip(batch)
  np.testing.assert_array_equal(cond['prev_frames'][:, 0], 0.0)
  np.testing.assert_allclose(cond['prev_frames'][:, 1:], clip[:, :-1])
  task.action_dropout = 0.5
  dropped = np.asarray(task.cond(batch, jax.random.PRNGKey(0))['actions'])
  null = dropped[:, 1:] == 5
  assert 0.3 < null.mean() < 0.7
  # Per example and frame, not per batch: rows mix kept and dropped.
  assert np.any(null.any(1) & ~null.all(1))
  with pytest.raises(UserError, match='actions'):
    task.cond({'video': video, 'actions': actions[:, :2]}, None)


def test_action_conditioned_rollout_equals_full_forward():
  from flax import nnx
  from visgen.models import video_dit
  model = video_dit.VideoDiT(
      rngs=nnx.Rngs(0), num_frames=4, input_size=8, patch=(1, 4, 4),
      width=16, depth=2, heads=1, num_actions=5, prev_frame=True,
      block_frames=1)
  # adaLN-Zero starts at zero: perturb every parameter so all paths count.
  graphdef, params = nnx.split(model)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = jax.tree.unflatten(tree, [
      x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  model = nnx.merge(graphdef, params)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 4, 8, 8, 3)), jnp.float32)
  prev = jnp.asarray(rng.normal(size=(2, 4, 8, 8, 3)), jnp.float32)
  acts = jnp.asarray([[5, 1, 4, 3], [5, 0, 2, 2]], jnp.int32)
  t = jnp.asarray([[0.0, 0.3, 0.0, 0.9], [0.0, 0.0, 0.5, 0.2]])
  full = model(x, t, {'actions': acts, 'prev_frames': prev})
  state = model.init_state(2)
  for i in range(4):
    out, state = model.step(x[:, i:i + 1], t[:, i], state,
                            {'actions': acts[:, i:i + 1],
                             'prev_frames': prev[:, i:i + 1]})
    np.testing.assert_allclose(out, full[:, i:i + 1], atol=1e-5)
  # The action changes its own frame's output.
  other = model(x, t, {'actions': acts.at[:, 2].set(0), 'prev_frames': prev})
  assert float(jnp.abs(other[:, 2] - full[:, 2]).max()) > 1e-3
  np.testing.assert_allclose(other[:, :2], full[:, :2], atol=1e-5)


def test_self_forced_prediction_is_the_stepwise_rollout_and_trains(
):
  from flax import nnx
  from visgen import models
  c = _config('runlocal,sf=1,sf_examples=2,sf_steps=1')
  assert dict(c.task.self_forcing) == dict(weight=1.0, examples=2, steps=1)
  kw = {k: v for k, v in dict(c.model).items() if k != 'name'}
  graphdef, params = models.split_model(
      models.get_model('video_dit', rngs=nnx.Rngs(0), **kw))
  leaves, tree = jax.tree.flatten(params)  # Past adaLN-Zero's zeros.
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = jax.tree.unflatten(tree, [
      x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  task = world_model.WorldModelTask(c, apply=models.make_apply(graphdef))
  rng = np.random.default_rng(0)
  history = jnp.asarray(rng.uniform(-1, 1, (2, 4, 8, 8, 3)), jnp.float32)
  acts = jnp.asarray([[5, 1, 4, 3], [5, 0, 2, 2]], jnp.int32)
  blocks = jnp.asarray([1, 3])
  x_t = jnp.asarray(rng.normal(size=(2, 1, 8, 8, 3)), jnp.float32)
  t = jnp.asarray([0.3, 0.8])

  @jax.jit
  def both(params):
    pred = task.predict_after_history(task.network(params), history, acts,
                                      blocks, x_t, t)
    refs = []  # The inference path: history committed block by block.
    for i, c_i in enumerate((1, 3)):
      state, prev = task.zero_state(1), jnp.zeros_like(history[:1, 0])
      for j in range(c_i):
        state = task.commit_block(params, state, prev,
                                  history[i:i + 1, j:j + 1],
                                  acts[i:i + 1, j:j + 1])
        prev = history[i:i + 1, j]
      refs.append(task.apply(
          params, x_t[i:i + 1], t[i:i + 1],
          task.block_cond(prev, acts[i:i + 1, c_i:c_i + 1]),
          state=state)[0][0])
    return pred, jnp.stack(refs)

  pred, ref = both(params)
  np.testing.assert_allclose(pred, ref, atol=2e-5)
  # The loss adds the self-forced term, and it has a gradient.
  batch = {'video': jnp.asarray(rng.integers(0, 256, (4, 4, 8, 8, 3)),
                                jnp.uint8),
           'actions': jnp.asarray(rng.integers(0, 5, (4, 3)), jnp.int32)}
  key = jax.random.PRNGKey(2)
  plain = world_model.WorldModelTask(_config(), apply=task.apply)

  def extra(p):  # The self-forced term of the loss: weight 1 * sf loss.
    total, aux, _ = task.loss(p, {}, {}, batch, key)
    return total - plain.loss(p, {}, {}, batch, key)[0], aux['sf_mse']

  (sf_loss, sf_mse), grads = jax.jit(jax.value_and_grad(
      extra, has_aux=True))(params)
  assert sf_mse.shape == (2,)
  np.testing.assert_allclose(sf_loss, jnp.mean(sf_mse), rtol=1e-4)
  assert float(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(grads))) > 0
  bad = _config('runlocal,sf=1')
  bad.task.self_forcing = dict(weight=1.0, example=2)
  with pytest.raises(UserError, match='unknown keys'):
    world_model.WorldModelTask(bad)


# -- Trained runlocal workdir: CLI, evaluation, server ------------------------


def _cli(capsys, argv):
  try:
    world_cli.main(argv)
    status = 0
  except SystemExit as e:
    status = e.code
  return status, capsys.readouterr()


def test_cli_writes_a_gif_with_the_right_frame_count(workdir, tmp_path,
                                                     capsys):
  out = str(tmp_path / 'roll.gif')
  status, cap = _cli(capsys, [f'--workdir={workdir}', '--actions=d,d,s',
                              '--frames=5', f'--out={out}', '--seed=1'])
  assert status == 0, cap.err
  with Image.open(out) as img:
    assert img.n_frames == 1 + 5  # the context frame + 5 generated
    assert img.height == 8 * 16  # 8x8 frames upscaled to 128
  assert '1 context + 5 generated' in cap.out


def test_cli_bad_input_is_one_error_line_and_exit_2(workdir, tmp_path,
                                                    capsys):
  gif = f'--out={tmp_path}/x.gif'
  cases = [
      ([f'--workdir={workdir}', '--actions=w,q,d', gif], "unknown action 'q'"),
      ([f'--workdir={tmp_path}/missing', '--actions=w', gif],
       'does not exist'),
      ([f'--workdir={tmp_path}', '--actions=w', gif], 'config.json'),
      ([f'--workdir={workdir}', '--actions=w', f'--out={tmp_path}/x.png'],
       '.gif'),
  ]
  notworld = tmp_path / 'video_run'
  notworld.mkdir()
  (notworld / 'config.json').write_text(json.dumps(
      {'task': {'name': 'video'}, 'data': {'name': 'shapes_video'}}))
  cases.append(([f'--workdir={notworld}', '--actions=w', gif],
                'not a world model'))
  for argv, msg in cases:
    status, cap = _cli(capsys, argv)
    assert status == 2, (argv, cap.err)
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error:'), cap.err
    assert msg in lines[0], lines[0]
  assert world_cli.parse_actions('W,up,a,LEFT,.,noop,4') == [1, 1, 3, 3, 0,
                                                             0, 4]


def test_evaluation_writes_results(wm, tmp_path):
  from visgen.evaluators import world_model as eval_lib
  res = eval_lib.evaluate(wm, num=2, length=3, ks=(1, 2))
  w = res['world']
  # The estimator on the true frames: exact here (these views have
  # structure); 2-3% misses on bare 16x16 views give ~0.3 px at full size.
  assert w['action_error_oracle_px'] < 1.0
  assert w['drift']['truth_mse'] == [0.0, 0.0]
  assert len(w['frame_psnr_db']) == 3
  files = eval_lib.write_results(str(tmp_path), res)
  with open(tmp_path / 'results.json') as f:
    saved = json.load(f)['world']
  for key in ('action_error_px', 'action_error_random_px', 'drift'):
    assert key in saved
  with Image.open(tmp_path / 'world_rollout.gif') as img:
    assert img.n_frames == 1 + 3
  assert (tmp_path / 'world_eval.png').stat().st_size > 1000
  assert len(files) == 4


def test_server_round_trip(wm):
  app = world_server.WorldApp(wm, world=0)
  server = world_server.make_server(app, host='127.0.0.1', port=0)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  port = server.server_address[1]

  def request(method, path, body=None):
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
    conn.request(method, path, body=None if body is None else
                 json.dumps(body), headers={'Content-Type':
                                            'application/json'})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, dict(r.getheaders()), data

  try:
    status, _, page = request('GET', '/')
    assert status == 200 and b'/act' in page
    status, headers, png = request('GET', '/frame.png')
    assert status == 200 and headers['Content-Type'] == 'image/png'
    assert png[:8] == b'\x89PNG\r\n\x1a\n'
    size = Image.open(io.BytesIO(png)).size
    assert size == ((2 * 8 + 1) * 16, 8 * 16)  # truth | model, upscaled
    first = Image.open(io.BytesIO(png)).convert('RGB')
    for i, key in enumerate(('d', 'right', 's'), start=2):
      status, headers, png = request('POST', '/act', {'action': key})
      assert status == 200 and png[:4] == b'\x89PNG'
      assert headers['X-Frame'] == str(i)
    assert Image.open(io.BytesIO(png)).convert('RGB') != first
    status, _, body = request('GET', '/state')
    state = json.loads(body)
    assert state['frames'] == 4 and state['actions'] == [4, 4, 2]
    status, _, body = request('POST', '/act', {'action': 'jump'})
    assert status == 400 and b'unknown action' in body
    status, _, body = request('POST', '/reset', {})
    assert status == 200 and json.loads(body)['frames'] == 1
  finally:
    server.shutdown()
    server.server_close()
