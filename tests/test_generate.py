"""`python -m visgen.generate`: prompts and labels through the task contract.

Two tiny workdirs are trained once (the runlocal variants of
configs/t2i_shapes.py and configs/quickstart.py, in-process); every case
then reads its config from WORKDIR/config.json as a user would.
"""

import os

from absl import flags
import numpy as np
from PIL import Image
import pytest

from visgen import builder
from visgen import config_loader
from visgen import generate
from visgen import main as main_lib
from visgen.tasks import bridge
from visgen.tasks import controlnet
from visgen.tasks import instruct_edit
from visgen.tasks import video

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


def _train(workdir, config):
  flags.FLAGS.mark_as_parsed()  # absl logging without app.run.
  status = main_lib.cli(['visgen.main', f'--config={ROOT}/{config}:runlocal',
                         f'--workdir={workdir}'])
  assert status == 0


@pytest.fixture(scope='module')
def workdirs(build_once):
  # Trained once per run, shared by the xdist workers (read-only here).
  return dict(
      t2i=build_once('generate-t2i',
                     lambda d: _train(d, 'configs/t2i_shapes.py')),
      qs=build_once('generate-qs',
                    lambda d: _train(d, 'configs/quickstart.py')))


def _gen(capsys, argv):
  try:
    generate.main(argv)
    status = 0
  except SystemExit as e:
    status = e.code
  return status, capsys.readouterr()


def test_prompt_becomes_the_tasks_tokens_with_a_negative(workdirs):
  config = config_loader.load_workdir(workdirs['t2i'])
  task = builder.build(config).task
  prompt = 'a small red circle left of a large blue square'
  cond = task.request_cond(3, prompt=prompt, negative='a green triangle')
  assert cond['text_tokens'].shape[0] == 3
  assert task.tokenizer.decode(cond['text_tokens'][2]) == prompt
  assert task.tokenizer.decode(cond['negative_tokens'][0]) == (
      'a green triangle')
  # Without --negative the learned null is the unconditional half.
  assert 'negative_tokens' not in task.request_cond(2, prompt=prompt)


def test_text_workdir_writes_a_grid_and_adm_npz(workdirs, tmp_path, capsys):
  out = tmp_path / 'sub' / 'grid.png'  # The folder is created.
  argv = [f'--workdir={workdirs["t2i"]}', '--prompt=a large green triangle',
          '--num=6', '--cfg=2', '--steps=3', f'--out={out}', '--npz']
  status, cap = _gen(capsys, argv)
  assert status == 0, cap.err
  assert 'euler 3 steps, cfg 2.0' in cap.out
  with np.load(tmp_path / 'sub' / 'grid.npz') as f:
    first = f['arr_0']
  assert first.shape == (6, 8, 8, 3) and first.dtype == np.uint8
  img = np.asarray(Image.open(out))
  assert img.ndim == 3 and img.shape[2] == 3 and img.shape[0] >= 8 * 4
  # Same seed: the same samples; another seed: others.
  assert _gen(capsys, argv)[0] == 0
  with np.load(tmp_path / 'sub' / 'grid.npz') as f:
    np.testing.assert_array_equal(f['arr_0'], first)
  assert _gen(capsys, argv + ['--seed=1'])[0] == 0
  with np.load(tmp_path / 'sub' / 'grid.npz') as f:
    assert not np.array_equal(f['arr_0'], first)


def test_class_workdir_cycles_the_labels(workdirs, tmp_path, capsys):
  out = tmp_path / 'q.png'
  status, cap = _gen(capsys, [f'--workdir={workdirs["qs"]}', '--label=3,4',
                              '--num=5', '--steps=2', f'--out={out}',
                              '--npz'])
  assert status == 0, cap.err
  with np.load(tmp_path / 'q.npz') as f:
    np.testing.assert_array_equal(f['arr_1'], [3, 4, 3, 4, 3])
    assert f['arr_0'].shape[0] == 5


@pytest.mark.parametrize('key,extra,expect', [
    ('t2i', ['--prompt=a small purple circle'], ["'purple'", 'vocabulary']),
    ('t2i', ['--label=2'], ['text-conditional', '--prompt']),
    ('t2i', [], ['--prompt']),
    ('qs', ['--prompt=a cat'], ['class-conditional', '--label']),
    ('qs', ['--label=12'], ['--label=12', '0..9']),
    ('qs', ['--label=-1'], ['--label=-1']),
    ('qs', ['--label=x'], ['--label', 'x']),
    ('qs', ['--label=3', '--sampler=bogus'], ['bogus', '--sampler=']),
    ('qs', ['--label=3', '--steps=0'], ['--steps']),
    ('qs', ['--label=3', '--cfg=nan'], ['--cfg']),
    ('qs', ['--label=3', '--num=0'], ['--num']),
    ('qs', ['--label=3', '--config=configs/nope.py'], ['configs/nope.py']),
    ('missing', ['--label=3'], ['does not exist']),
    ('empty', ['--label=3'], ['config.json']),
])
def test_bad_requests_are_one_line(workdirs, tmp_path, capsys, key, extra,
                                   expect):
  wd = dict(workdirs, missing=str(tmp_path / 'nope'),
            empty=str(tmp_path))[key]
  status, cap = _gen(capsys, [f'--workdir={wd}', *extra,
                              f'--out={tmp_path}/g.png'])
  assert status == 2
  lines = [ln for ln in cap.err.splitlines() if ln.startswith('error: ')]
  assert len(lines) == 1 and 'Traceback' not in cap.err, cap.err
  for s in expect:
    assert s in lines[0], (s, lines[0])
  assert not os.path.exists(tmp_path / 'g.png')


def test_out_must_be_a_png(workdirs, tmp_path, capsys):
  status, cap = _gen(capsys, [f'--workdir={workdirs["qs"]}', '--label=1',
                              f'--out={tmp_path}/g.jpg'])
  assert status == 2 and '.png' in cap.err


def test_tasks_whose_conditions_come_from_data_ask_for_nothing():
  for cls in (bridge.BridgeTask, controlnet.ControlNetTask,
              instruct_edit.InstructEditTask, video.VideoTask):
    assert cls.REQUESTS == (), cls


def test_null_cond_is_the_null_class(workdirs):
  task = builder.build(config_loader.load_workdir(workdirs['qs'])).task
  np.testing.assert_array_equal(task.null_cond(None, 3)['label'],
                                [10, 10, 10])
