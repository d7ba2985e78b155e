r"""Generate images from a trained workdir: a prompt or a class, to a grid.

  python -m visgen.generate --workdir=DIR \
      --prompt="a small red circle left of a large blue square" \
      [--negative="..."] [--num=16] [--cfg=4] [--sampler=euler] [--steps=20] \
      [--seed=0] [--weights=ema|raw] [--config=configs/X.py[:arg]] \
      --out=grid.png [--npz]
  python -m visgen.generate --workdir=DIR --label=3 --out=grid.png

Text-conditional workdirs (`text_to_image`) take `--prompt` (and
`--negative`, which replaces the null text of classifier-free guidance:
D = D(neg) + s (D(prompt) - D(neg))); class-conditional ones take
`--label=K` or `--label=0,1,2` (cycled over the samples); unconditional
ones take neither. The workdir's own `config.json` is the config unless
`--config` names one; `--sampler`, `--steps` and `--cfg` override its
sampler (they do not change the fingerprint the checkpoint is restored
against). The conditioning is built by the task itself
(`task.request_cond`, the task contract), so a prompt word outside the
tokenizer's vocabulary, a label out of range or a request the model cannot
take is one line naming it and exit 2, like a missing workdir or checkpoint.

Writes OUT (a PNG grid, 4x upscaled, `visgen.media`) and with `--npz` also
OUT's stem + .npz (ADM format: arr_0 uint8 NHWC, arr_1 labels when
class-conditional), ready for `python -m visgen.evaluate`.
"""

import argparse
import math
import os
import sys

from visgen import validate

FLAGS_HELP = __doc__.split('\n')[0]


def _parse_labels(text: str | None):
  if text is None:
    return None
  try:
    return [int(s) for s in text.split(',') if s.strip()]
  except ValueError:
    raise validate.UserError(
        f'--label={text!r} is invalid: must be an integer or integers '
        'separated by commas. Fix: pass e.g. --label=3 or --label=0,1,2.'
    ) from None


def _config(args, workdir: str):
  from visgen import config_loader  # pylint: disable=g-import-not-at-top

  if args.config:
    try:
      config = config_loader.load(args.config)
    except FileNotFoundError as e:
      raise validate.UserError(str(e)) from e
  else:
    try:
      config = config_loader.load_workdir(workdir)
    except (FileNotFoundError, ValueError) as e:
      raise validate.UserError(str(e)) from e
  if args.sampler is not None:
    config.sampler.name = args.sampler
  if args.steps is not None:
    validate.check_arg('--steps', args.steps, args.steps >= 1,
                       'an integer >= 1')
    config.sampler.steps = args.steps
  if args.cfg is not None:
    validate.check_arg('--cfg', args.cfg, math.isfinite(args.cfg),
                       'a finite number (1 = no guidance)')
    config.sampler.cfg_scale = args.cfg
  try:
    validate.check_config(config, mode='sample')
  except validate.UserError as e:  # Name this CLI's flags, not config keys.
    msg = str(e)
    for key, flag in (('--config.sampler.name', '--sampler'),
                      ('--config.sampler.steps', '--steps'),
                      ('--config.sampler.cfg_scale', '--cfg')):
      msg = msg.replace(key, flag)
    raise validate.UserError(msg) from e
  return config


def generate(args) -> dict:
  """Everything `main` does after parsing; returns what it wrote."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from visgen import builder  # pylint: disable=g-import-not-at-top
  from visgen import media as media_lib  # pylint: disable=g-import-not-at-top

  workdir = validate.resolve_workdir(args.workdir, create=False)
  validate.check_arg('--num', args.num, args.num >= 1, 'an integer >= 1')
  out = validate.check_output_file(args.out, flag='--out')
  if not out.lower().endswith('.png'):
    raise validate.UserError(f'--out={out} must name a .png file. Fix: pass '
                             '--out=grid.png.')
  labels = _parse_labels(args.label)
  config = _config(args, workdir)

  # The task answers the request before any checkpoint is read: a bad
  # prompt costs nothing.
  b = builder.build(config)
  task = b.task
  asks = getattr(task, 'REQUESTS', ())
  if not asks:
    raise validate.UserError(
        f'{type(task).__name__} draws its conditions (control maps, source '
        'images, frames) from data; visgen.generate takes prompts and '
        'labels only. Fix: use python -m visgen.main --mode=sample '
        f'--workdir={workdir}.')
  try:
    cond = task.request_cond(args.num, label=labels, prompt=args.prompt,
                             negative=args.negative)
  except ValueError as e:
    raise validate.UserError(str(e)) from e

  b, state, step = builder.restore(config, workdir, built=b)
  params = (builder.first_ema(state) if args.weights == 'ema'
            else state['params'])
  fn = builder.make_sample_fn(b, args.num)
  x = fn(params, b.frozen.params, cond, jax.random.key(args.seed),
         builder.guidance_scale(config))
  media = task.to_media(x, cond)
  written = [media_lib.write_png(out, media)]
  if args.npz:
    written.append(media_lib.write_npz(os.path.splitext(out)[0] + '.npz',
                                       media))
  s = config.sampler
  print(f'Wrote {args.num} samples of step {step} ({args.weights} weights, '
        f'{s.name} {s.get("steps")} steps, cfg {s.get("cfg_scale", 1.0)}) '
        f'to {", ".join(written)}')
  return dict(step=step, files=written,
              samples=np.asarray(media.samples))


def parser() -> argparse.ArgumentParser:
  """The command line (also parsed by the README test)."""
  parser = argparse.ArgumentParser(prog='python -m visgen.generate',
                                   description=FLAGS_HELP)
  parser.add_argument('--workdir', required=True,
                      help='a training workdir (its latest checkpoint)')
  parser.add_argument('--prompt', default=None,
                      help='text-conditional workdirs: the prompt')
  parser.add_argument('--negative', default=None,
                      help='text-conditional workdirs: a negative prompt')
  parser.add_argument('--label', default=None,
                      help='class-conditional workdirs: K or K1,K2,...')
  parser.add_argument('--num', type=int, default=16)
  parser.add_argument('--cfg', type=float, default=None,
                      help='classifier-free guidance scale (default: the '
                      "config's sampler.cfg_scale)")
  parser.add_argument('--sampler', default=None,
                      help="sampler name (default: the config's)")
  parser.add_argument('--steps', type=int, default=None,
                      help="sampler steps (default: the config's)")
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--weights', choices=('ema', 'raw'), default='ema')
  parser.add_argument('--config', default=None,
                      help='configs/X.py[:arg] instead of WORKDIR/config.json')
  parser.add_argument('--out', required=True, help='the PNG grid to write')
  parser.add_argument('--npz', action='store_true',
                      help='also write the samples as an ADM-format .npz')
  parser.add_argument('--verbose', action='store_true',
                      help='show the traceback of errors')
  return parser


def main(argv=None):
  args = parser().parse_args(argv)
  if not args.verbose:  # Orbax's read-only restore notes are not news here.
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.set_verbosity(logging.ERROR)
  status = validate.run_cli(lambda: generate(args), verbose=args.verbose)
  if status:
    raise SystemExit(status)


if __name__ == '__main__':
  sys.exit(main())
