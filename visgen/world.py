r"""Play a trained world model: roll out under actions, evaluate, serve.

  python -m visgen.world --workdir=DIR --actions=d,d,s,s,a,a,w,w \
      --frames=8 --out=rollout.gif [--seed=0] [--world=0] [--start=F.png]
  python -m visgen.world --workdir=DIR --interactive --out=rollout.gif
  python -m visgen.world --workdir=DIR --eval [--results=DIR] [--num=16] \
      [--cfg_sweep=1,4,8,16]
  python -m visgen.world --workdir=DIR --serve [--port=8000]

DIR is a `world_model` run (`configs/world_shapes.py`). The rollout starts
from the first block of test world `--world` (or the image `--start`: a
frame of the model's resolution, with no ground truth to show), commits it
to the model's constant-size state and generates one frame per action,
block by block (`visgen.tasks.world_model.WorldSession`).

Actions: w/up, s/down, a/left, d/right, ./n/noop, separated by commas
(`--actions=w,w,a` or `--actions=up,up,left`); `--frames=N` generated
frames cycle through the list (default: its length). The GIF
(`visgen.media.write_gif`) holds the context block and then the N generated
frames; for a test world each frame shows the ground truth
(`World.step` / `World.view` under the same actions) left of the
generated frame (`--no-truth`: the generated frames alone).
`--interactive` reads actions line by line from stdin until EOF or `q`,
prints one line per generated frame, then writes --out.

`--eval` measures action following and drift against the world's ground
truth (`visgen.evaluators.world_model`) and writes results.json,
results.md, world_eval.png and world_rollout.gif to --results (default
DIR/world_eval); `--cfg_sweep` adds the headline numbers at other
classifier-free guidance scales on the actions. `--serve` starts a local
page (`visgen.world_server`) where arrow keys / WASD send actions and the
next frame comes back as PNG.

Bad input (an unknown action, a missing workdir or checkpoint, a workdir
that is not a world model) is one `error:` line and exit status 2.
"""

import argparse
import sys

import numpy as np

from visgen import validate

FLAGS_HELP = __doc__.split('\n')[0]

# Accepted spellings of each action (indices into shapes_world.ACTIONS).
ACTION_NAMES = {
    'noop': 0, 'n': 0, '.': 0,
    'up': 1, 'w': 1,
    'down': 2, 's': 2,
    'left': 3, 'a': 3,
    'right': 4, 'd': 4,
}
VALID_ACTIONS = 'w/up, s/down, a/left, d/right, ./n/noop'
ACTION_NAMES_BY_INDEX = ('noop', 'up', 'down', 'left', 'right')


def parse_action(token) -> int:
  """One action (a name, a WASD letter, or an index 0..4) -> its index."""
  t = str(token).strip().lower()
  if t in ACTION_NAMES:
    return ACTION_NAMES[t]
  if t.isdigit() and 0 <= int(t) <= 4:
    return int(t)
  raise validate.UserError(f'unknown action {str(token).strip()!r}. Valid '
                           f'actions: '
                           f'{VALID_ACTIONS} (or 0..4), separated by '
                           'commas, e.g. --actions=w,w,a,d.')


def parse_actions(text: str | None) -> list[int]:
  if text is None or not text.strip():
    raise validate.UserError('--actions is empty. Fix: pass e.g. '
                             '--actions=w,w,a,d (' + VALID_ACTIONS + ').')
  return [parse_action(t) for t in text.split(',') if t.strip()]


class WorldModel:
  """A restored world-model run: config, task, params, its test worlds."""

  def __init__(self, workdir: str, *, weights: str = 'ema',
               config_path: str | None = None):
    from visgen import builder  # pylint: disable=g-import-not-at-top
    from visgen import config_loader  # pylint: disable=g-import-not-at-top

    self.workdir = validate.resolve_workdir(workdir, create=False)
    try:
      config = (config_loader.load(config_path) if config_path
                else config_loader.load_workdir(self.workdir))
    except (FileNotFoundError, ValueError) as e:
      raise validate.UserError(str(e)) from e
    name = config.task.get('name')
    if name != 'world_model':
      raise validate.UserError(
          f'{self.workdir} is a {name!r} run, not a world model '
          "(config.task.name must be 'world_model'). Fix: train one with "
          'python -m visgen.main --config=configs/world_shapes.py '
          '--workdir=DIR and pass that DIR.')
    if config.data.get('name') != 'shapes_world':
      raise validate.UserError('visgen.world plays shapes_world models; '
                               f'this run trained on {config.data.name!r}.')
    b, state, step = builder.restore(config, self.workdir)
    self.config, self.task, self.step = config, b.task, step
    self.params = (builder.first_ema(state) if weights == 'ema'
                   else state['params'])

  def session_guidance(self, guidance=None) -> float:
    """The CFG scale a session uses (`guidance`, else the config's)."""
    return float(dict(self.task.sampler_cfg).get('cfg_scale', 1.0)
                 if guidance is None else guidance)

  @property
  def resolution(self) -> int:
    return int(self.task.x_shape[1])

  def test_source(self):
    from visgen import data  # pylint: disable=g-import-not-at-top
    from visgen.data import pipeline  # pylint: disable=g-import-not-at-top

    return data.get_source('shapes_world', split='test',
                           **pipeline.source_kwargs(self.config.data))

  def test_start(self, index: int):
    """(world, camera of the context's last frame, context uint8 (F, H, W,
    C), its per-frame actions (F,)) from test trajectory `index`."""
    source = self.test_source()
    if not 0 <= index < len(source):
      raise validate.UserError(f'--world={index} is out of range: the test '
                               f'split has {len(source)} worlds.')
    ex = source[index]
    f = self.task.block_frames
    acts = np.concatenate([[self.task.null_action],
                           ex['actions'][:f - 1]]).astype(np.int32)
    return (source.world(index), ex['camera'][f - 1], ex['video'][:f],
            acts)

  def session(self, context_uint8, context_actions, *, seed: int = 0,
              guidance=None, steps=None):
    from visgen.data import preprocess  # pylint: disable=g-import-not-at-top
    from visgen.tasks import world_model  # pylint: disable=g-import-not-at-top

    ctx = preprocess.to_float(np.asarray(context_uint8))
    acts = np.asarray(context_actions, np.int32)
    if ctx.ndim == 4:
      ctx, acts = ctx[None], acts[None]
    return world_model.WorldSession(self.task, self.params, ctx, acts,
                                    seed=seed, guidance=guidance,
                                    steps=steps)


def load_start_image(path: str, resolution: int) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top

  path = validate.check_input_file(path, what='--start')
  try:
    img = np.asarray(Image.open(path).convert('RGB'))
  except OSError as e:
    raise validate.UserError(f'--start={path} is not an image: {e}') from e
  if img.shape[:2] != (resolution, resolution):
    raise validate.UserError(
        f'--start={path} is {img.shape[1]}x{img.shape[0]}; the model '
        f'generates {resolution}x{resolution} frames. Fix: pass a '
        f'{resolution}x{resolution} image.')
  return img


def truth_frames(world, camera, actions) -> np.ndarray:
  """uint8 (K, H, W, C): the world's views after each action from camera."""
  out, cam = [], np.asarray(camera)
  for a in actions:
    cam = world.step(cam, int(a))
    out.append(world.view(cam))
  return np.stack(out)


def side_by_side(left, right) -> np.ndarray:
  """(..., H, W, C) x 2 -> (..., H, 2W + 1, C) with a grey gap."""
  gap = np.full(left.shape[:-2] + (1, left.shape[-1]), 128, np.uint8)
  return np.concatenate([left, gap, right], axis=-2)


def _write_gif(out: str, frames_uint8: np.ndarray) -> str:
  from visgen import media as media_lib  # pylint: disable=g-import-not-at-top

  upscale = max(1, 128 // frames_uint8.shape[1])
  return media_lib.write_gif(out, media_lib.Media(frames_uint8[None],
                                                  kind='video'),
                             fps=4.0, upscale=upscale)


def rollout_cli(args) -> dict:
  """--actions / --interactive: a rollout written as a GIF."""
  from visgen.data import preprocess  # pylint: disable=g-import-not-at-top

  out = validate.check_output_file(args.out, flag='--out')
  if out is None:
    raise validate.UserError('--out is required: the GIF to write, e.g. '
                             '--out=rollout.gif.')
  if not out.lower().endswith('.gif'):
    raise validate.UserError(f'--out={out} must name a .gif file.')
  actions = None
  if not args.interactive:
    actions = parse_actions(args.actions)
    n = len(actions) if args.frames is None else args.frames
    validate.check_arg('--frames', args.frames, n >= 1, 'an integer >= 1')
    actions = [actions[i % len(actions)] for i in range(n)]
  wm = WorldModel(args.workdir, weights=args.weights,
                  config_path=args.config)
  f = wm.task.block_frames
  if actions is not None and len(actions) % f:
    raise validate.UserError(
        f'--frames={len(actions)}: this model generates blocks of {f} '
        f'frames; pass a multiple of {f}.')
  world = camera = None
  if args.start:
    img = load_start_image(args.start, wm.resolution)
    context = np.repeat(img[None], f, axis=0)
    ctx_actions = np.asarray([wm.task.null_action] + [0] * (f - 1))
  else:
    world, camera, context, ctx_actions = wm.test_start(args.world)
  session = wm.session(context, ctx_actions, seed=args.seed,
                       guidance=args.cfg, steps=args.steps)
  gen = []
  if actions is not None:
    gen.append(session.act(actions)[0])
  else:
    actions = []
    print(f'Actions ({VALID_ACTIONS}), comma-separated, one line per '
          'move; q or end of input to finish.', flush=True)
    for line in sys.stdin:
      if line.strip().lower() in ('q', 'quit', 'exit'):
        break
      try:
        step_actions = [parse_action(t) for t in line.strip().split(',')
                        if t.strip()]
      except validate.UserError as e:
        print(f'error: {e}', flush=True)
        continue
      step_actions = [a for a in step_actions for _ in range(f)]
      if not step_actions:
        continue
      gen.append(session.act(step_actions)[0])
      actions += step_actions
      print(f'frame {session.frames_done}: '
            + ','.join(ACTION_NAMES_BY_INDEX[a] for a in step_actions),
            flush=True)
  generated = (preprocess.to_uint8(np.concatenate(gen)) if gen else
               np.zeros((0,) + context.shape[1:], np.uint8))
  video = np.concatenate([context, generated])
  if world is not None and args.truth:
    truth = np.concatenate([context, truth_frames(world, camera, actions)])
    video = side_by_side(truth, video)
  path = _write_gif(out, video)
  print(f'Wrote {len(video)} frames ({len(context)} context + '
        f'{len(generated)} generated, step {wm.step}) to {path}')
  return dict(path=path, frames=len(video), actions=actions)


def eval_cli(args) -> dict:
  # pylint: disable-next=g-import-not-at-top
  from visgen.evaluators import world_model as eval_lib

  validate.check_arg('--num', args.num, args.num >= 1, 'an integer >= 1')
  wm = WorldModel(args.workdir, weights=args.weights,
                  config_path=args.config)
  results_dir = args.results or f'{wm.workdir}/world_eval'
  results_dir = validate.resolve_workdir(results_dir, create=True,
                                         flag='--results')
  sweep = []
  if args.cfg_sweep:
    try:
      sweep = [float(x) for x in args.cfg_sweep.split(',') if x.strip()]
    except ValueError:
      raise validate.UserError(f'--cfg_sweep={args.cfg_sweep!r} is invalid: '
                               'pass guidance scales separated by commas, '
                               'e.g. --cfg_sweep=1,4,8.') from None
  res = eval_lib.evaluate(wm, num=args.num, length=args.length,
                          seed=args.seed, guidance=args.cfg,
                          steps=args.steps)
  if sweep:
    res['cfg_sweep'] = [eval_lib.summary(eval_lib.evaluate(
        wm, num=args.num, length=args.length, seed=args.seed, guidance=g,
        steps=args.steps)) for g in sweep]
  files = eval_lib.write_results(results_dir, res)
  print(eval_lib.markdown_table(res))
  print('Wrote ' + ', '.join(files))
  return res


def serve_cli(args) -> None:
  from visgen import world_server  # pylint: disable=g-import-not-at-top

  validate.check_arg('--port', args.port, 0 <= args.port < 65536,
                     'a port number in 0..65535')
  wm = WorldModel(args.workdir, weights=args.weights,
                  config_path=args.config)
  app = world_server.WorldApp(wm, world=args.world, seed=args.seed,
                              guidance=args.cfg, steps=args.steps)
  server = world_server.make_server(app, host=args.host, port=args.port)
  host, port = server.server_address[:2]
  print(f'Serving the world model (step {wm.step}) at http://{host}:{port}/ '
        '(Ctrl-C to stop)', flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m visgen.world',
                              description=FLAGS_HELP)
  p.add_argument('--workdir', required=True,
                 help='a world_model training workdir')
  mode = p.add_mutually_exclusive_group()
  mode.add_argument('--actions', default=None,
                    help=f'comma-separated actions ({VALID_ACTIONS})')
  mode.add_argument('--interactive', action='store_true',
                    help='read actions from stdin, one line per move')
  mode.add_argument('--eval', action='store_true',
                    help='action-following error and drift -> --results')
  mode.add_argument('--serve', action='store_true',
                    help='a local web page driven by the arrow keys')
  p.add_argument('--frames', type=int, default=None,
                 help='generated frames (the actions cycle; default: as '
                 'many as actions)')
  p.add_argument('--out', default=None, help='the GIF to write')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--world', type=int, default=0,
                 help='the test world to start in (its first block)')
  p.add_argument('--start', default=None,
                 help='a start frame (PNG of the model resolution) instead')
  p.add_argument('--truth', action=argparse.BooleanOptionalAction,
                 default=True, help='show the ground truth beside')
  p.add_argument('--cfg', type=float, default=None,
                 help="CFG scale on the actions (default: the config's)")
  p.add_argument('--steps', type=int, default=None,
                 help="sampler steps per block (default: the config's)")
  p.add_argument('--num', type=int, default=16, help='--eval: test worlds')
  p.add_argument('--length', type=int, default=16,
                 help='--eval: actions per evaluated path')
  p.add_argument('--cfg_sweep', default=None,
                 help='--eval: also these CFG scales, e.g. 1,4,8,16')
  p.add_argument('--results', default=None,
                 help='--eval: output folder (default WORKDIR/world_eval)')
  p.add_argument('--host', default='127.0.0.1')
  p.add_argument('--port', type=int, default=8000)
  p.add_argument('--weights', choices=('ema', 'raw'), default='ema')
  p.add_argument('--config', default=None,
                 help='configs/X.py[:arg] instead of WORKDIR/config.json')
  p.add_argument('--verbose', action='store_true',
                 help='show the traceback of errors')
  return p


def run(args) -> object:
  if args.steps is not None:
    validate.check_arg('--steps', args.steps, args.steps >= 1,
                       'an integer >= 1')
  if args.eval:
    return eval_cli(args)
  if args.serve:
    return serve_cli(args)
  if args.actions is None and not args.interactive:
    raise validate.UserError('nothing to do: pass --actions=w,w,a,d (or '
                             '--interactive) with --out=F.gif, --eval or '
                             '--serve.')
  return rollout_cli(args)


def main(argv=None):
  args = parser().parse_args(argv)
  if not args.verbose:  # Orbax's read-only restore notes are not news here.
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.set_verbosity(logging.ERROR)
  status = validate.run_cli(lambda: run(args), verbose=args.verbose)
  if status:
    raise SystemExit(status)


if __name__ == '__main__':
  sys.exit(main())
