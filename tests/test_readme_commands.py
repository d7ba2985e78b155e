"""The README's set-up commands, parsed from the README and run as written.

Command 1 (install, then train the quickstart into the relative
`--workdir=workdirs/quickstart`) runs from a fresh working directory that
holds only links to the package and the configs, at the quickstart's
`:runlocal` size; the install part is not run (the suite already runs in
that environment) and `.venv/bin/python` is this interpreter. Then the same
command again: a finished workdir is a no-op that keeps metrics.json strict
JSON with the same final loss, and adds the second segment's wall time.
Command 2 (the test suite) is only checked to be pytest over tests/.
"""

import json
import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


def setup_commands() -> list[str]:
  """The commands of the ```bash block under '## Set-up: the two commands',
  continuation lines joined, comments dropped."""
  with open(os.path.join(ROOT, 'README.md')) as f:
    readme = f.read()
  section = readme.split('## Set-up: the two commands', 1)[1]
  block = re.search(r'```bash\n(.*?)```', section, re.S).group(1)
  lines = [ln for ln in block.splitlines()
           if ln.strip() and not ln.strip().startswith('#')]
  commands, current = [], ''
  for ln in lines:
    current += ln.rstrip()[:-1] + ' ' if ln.rstrip().endswith('\\') else ln
    if not ln.rstrip().endswith('\\'):
      commands.append(' '.join(current.split()))
      current = ''
  return commands


def _parts(command: str) -> list[list[str]]:
  return [shlex.split(p) for p in command.split('&&')]


def _reject(constant):
  raise ValueError(f'{constant} is not JSON')


def _strict_json(path):
  """Parses like a strict JSON reader: NaN / Infinity raise."""
  with open(path) as f:
    return json.loads(f.read(), parse_constant=_reject)


def test_readme_setup_commands_as_written(tmp_path):
  install, tests = setup_commands()
  parts = _parts(install)
  assert parts[0][:3] == ['python3', '-m', 'venv']
  assert parts[1] == ['.venv/bin/pip', 'install', '-r', 'requirements.txt']
  assert os.path.exists(os.path.join(ROOT, 'requirements.txt'))
  run = parts[2]
  assert run[:3] == ['.venv/bin/python', '-m', 'visgen.main'], run
  assert shlex.split(tests)[:4] == ['.venv/bin/python', '-m', 'pytest',
                                    '-q'] and 'tests' in shlex.split(tests)

  # The quickstart at its runlocal size, the workdir exactly as written.
  args = [a + ':runlocal' if a == '--config=configs/quickstart.py' else a
          for a in run[3:]]
  assert '--config=configs/quickstart.py:runlocal' in args, args
  workdir = [a.split('=', 1)[1] for a in args if a.startswith('--workdir=')]
  assert workdir == ['workdirs/quickstart']  # Relative, as a user types it.
  for name in ('visgen', 'configs'):  # A fresh directory, nothing else.
    os.symlink(os.path.join(ROOT, name), tmp_path / name)
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='1')  # CI speed.
  env.pop('PYTHONPATH', None)

  def run_once():
    out = subprocess.run([sys.executable, '-m', 'visgen.main', *args],
                         cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-4000:]
    assert 'Traceback' not in out.stderr
    return _strict_json(tmp_path / 'workdirs' / 'quickstart' /
                        'metrics.json')

  first = run_once()
  wd = tmp_path / 'workdirs' / 'quickstart'
  assert (wd / 'samples.png').stat().st_size > 0
  assert first['steps'] == 4 and isinstance(first['final_loss'], float)
  assert first['train_wall_time_s'] > 0

  # The same command on the finished workdir: nothing to train, and the
  # metrics stay valid (no NaN) with the time of both segments.
  second = run_once()
  assert second['steps'] == 4
  assert second['final_loss'] == first['final_loss']
  assert second['train_wall_time_s'] > first['train_wall_time_s']


def readme_commands(module: str) -> list[list[str]]:
  """argv (after `-m module`) of every README command running `module`, in
  ```bash blocks (continuations joined, comments dropped); templates with
  <placeholders> or [optional parts] are skipped."""
  with open(os.path.join(ROOT, 'README.md')) as f:
    readme = f.read()
  out = []
  for block in re.findall(r'```bash\n(.*?)```', readme, re.S):
    joined = re.sub(r'\\\n\s*', ' ', block)
    for line in joined.splitlines():
      line = line.split(' #', 1)[0].strip()
      if f'-m {module}' not in line or line.startswith('#'):
        continue
      argv = shlex.split(line.split('&&')[-1])
      if any(c in a for a in argv for c in '<['):
        continue
      out.append(argv[argv.index(module) + 1:])
  return out


def test_every_readme_training_command_parses_and_validates(monkeypatch):
  """Every `python -m visgen.main ...` of the README: its flags parse and
  its config passes validation (nothing is run)."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  from visgen import main  # pylint: disable=g-import-not-at-top
  from visgen import validate  # pylint: disable=g-import-not-at-top

  commands = readme_commands('visgen.main')
  assert len(commands) >= 5, commands
  monkeypatch.chdir(ROOT)
  for argv in commands:
    fv = flags.FlagValues()
    main._define_flags(fv)  # pylint: disable=protected-access
    monkeypatch.setattr(sys, 'argv', ['visgen.main', *argv])
    fv(['visgen.main', *argv])
    assert fv.workdir, argv
    validate.check_config(fv.config, mode=fv.mode, device_count=1)


def test_every_readme_generate_command_parses():
  """Every `python -m visgen.generate ...` of the README parses, with a
  workdir, an output and exactly one kind of request."""
  from visgen import generate  # pylint: disable=g-import-not-at-top

  commands = readme_commands('visgen.generate')
  assert len(commands) >= 2, commands
  for argv in commands:
    args = generate.parser().parse_args(argv)
    assert args.workdir and args.out.endswith('.png'), argv
    assert (args.prompt is None) != (args.label is None), argv
