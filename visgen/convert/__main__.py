"""python -m visgen.convert --from=FORMAT --src=DIR --out=DIR [--verify]"""

import argparse
import importlib
import sys

from visgen.convert import IMPORTERS


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m visgen.convert')
  parser.add_argument('--from', dest='fmt', required=True,
                      choices=sorted(IMPORTERS),
                      help='the checkpoint format of --src')
  parser.add_argument('--src', required=True,
                      help='the reference checkpoint directory')
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument('--input_size', type=int, default=None,
                      help="images' side the port expects (default: the "
                      "reference config's sample_size)")
  parser.add_argument('--heads', type=int, default=None,
                      help='attention heads of a --from=dit model whose '
                      'width is not one of the paper\'s (not stored in the '
                      'file)')
  parser.add_argument('--reference', default=None,
                      help='--from=dit --verify: a clone of '
                      'facebookresearch/DiT (its models.py is the reference; '
                      'default $DIT_REPO)')
  parser.add_argument('--verify', action='store_true',
                      help='run the reference model and the port on the '
                      'same random input (needs torch + the reference '
                      'library)')
  args = parser.parse_args(argv)
  mod = importlib.import_module(IMPORTERS[args.fmt])
  try:
    summary = mod.convert_dir(args.src, args.out, input_size=args.input_size,
                              heads=args.heads)
  except (FileNotFoundError, ValueError, KeyError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'{summary["num_params"]:,} parameters ({summary["model"]["name"]}) '
        f'-> {summary["out"]}')
  if args.verify:
    try:
      err = mod.verify(args.src, args.out, reference=args.reference)
    except ImportError as e:
      print(f'error: --verify needs the reference implementation: {e}',
            file=sys.stderr)
      return 2
    print(f'max relative error (reference vs port): {err:.3g}')
    return 0 if err <= 1e-4 else 3
  return 0


if __name__ == '__main__':
  sys.exit(main())
