"""Writes a PNG grid of examples of any registered dataset.

  python -m visgen.data.preview shapes --split=train --out=/tmp/shapes.png

Plain datasets give a grid of images. Scene datasets give one row per
example: image, instance mask, semantic mask and edges (shapes); source,
edited image and edit mask (shapes_edit); the frames of a sequence (video
and world datasets). Captions, instructions and actions are drawn to the
right of each row (PIL's default font) and also written to a side-car text
file next to the PNG (FILE.txt), one line per example.
"""

import argparse
import math
import os
import sys

import numpy as np
from PIL import Image
from PIL import ImageDraw

import visgen.data
from visgen.data import shapes
from visgen.data import shapes_world

# Distinct colours for instance ids / semantic classes (0 = background).
_ID_COLOURS = np.array(
    [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
     (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230)],
    np.uint8)


def _rgb(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  return np.repeat(image, 3, -1) if image.shape[-1] == 1 else image[..., :3]


def _ids(mask: np.ndarray) -> np.ndarray:
  return _ID_COLOURS[np.asarray(mask)[..., 0] % len(_ID_COLOURS)]


def rows_for(name: str, ex: dict) -> tuple[list[np.ndarray], str]:
  """Panels (uint8 HxWx3) and the text shown for one example."""
  if name == 'shapes_edit':
    return ([_rgb(ex['image']), _rgb(ex['edited_image']),
             _rgb(ex['edit_mask']), _ids(ex['instance_mask']),
             _ids(ex['edited_instance_mask'])],
            f"{ex['instruction']} | {ex['caption']} -> "
            f"{ex['edited_caption']}")
  if 'video' in ex:
    text = str(ex.get('caption', ''))
    if 'actions' in ex:
      text = 'actions: ' + ' '.join(
          shapes_world.ACTIONS[a] for a in ex['actions'])
    elif 'labels' in ex:
      text = 'digits: ' + ' '.join(str(v) for v in ex['labels'])
    return [_rgb(f) for f in ex['video']], text
  if 'instance_mask' in ex:
    return ([_rgb(ex['image']), _ids(ex['instance_mask']),
             _ids(ex['semantic_mask']), _rgb(ex['edges'])],
            f"[{shapes.SHAPES[int(ex['label'])]}] {ex['caption']}")
  label = f"label {int(ex['label'])}" if 'label' in ex else ''
  return [_rgb(ex['image'])], label


def _upscale(panel: np.ndarray, scale: int) -> np.ndarray:
  return np.kron(panel, np.ones((scale, scale, 1), np.uint8))


def compose(name: str, examples: list[dict], *, scale: int,
            draw_text: bool = True) -> tuple[Image.Image, list[str]]:
  """Builds the preview image and the per-example text lines."""
  rows = [rows_for(name, ex) for ex in examples]
  texts = [t for _, t in rows]
  pad = 2
  if len(rows[0][0]) == 1:  # plain images: a square-ish grid
    tiles = [_upscale(p[0], scale) for p, _ in rows]
    h, w = tiles[0].shape[:2]
    cols = math.ceil(math.sqrt(len(tiles)))
    nrows = math.ceil(len(tiles) / cols)
    canvas = np.full((nrows * (h + pad) + pad, cols * (w + pad) + pad, 3),
                     255, np.uint8)
    for i, tile in enumerate(tiles):
      r, c = divmod(i, cols)
      y, x = pad + r * (h + pad), pad + c * (w + pad)
      canvas[y:y + h, x:x + w] = tile
    return Image.fromarray(canvas), texts
  panels = [[_upscale(p, scale) for p in ps] for ps, _ in rows]
  h, w = panels[0][0].shape[:2]
  ncols = max(len(ps) for ps in panels)
  text_w = 5 * max(len(t) for t in texts) + 12 if draw_text else 0
  canvas = np.full((len(panels) * (h + pad) + pad,
                    ncols * (w + pad) + pad + text_w, 3), 255, np.uint8)
  for r, ps in enumerate(panels):
    for c, p in enumerate(ps):
      y, x = pad + r * (h + pad), pad + c * (w + pad)
      canvas[y:y + h, x:x + w] = p
  image = Image.fromarray(canvas)
  if draw_text:
    draw = ImageDraw.Draw(image)
    for r, text in enumerate(texts):
      y = pad + r * (h + pad) + h // 2 - 5
      draw.text((ncols * (w + pad) + pad + 4, y), text, fill=(0, 0, 0))
  return image, texts


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('name', help=', '.join(visgen.data.names()))
  parser.add_argument('--split', default='train')
  parser.add_argument('--out', required=True, help='output PNG path')
  parser.add_argument('--num', type=int, default=None,
                      help='examples (default 16; 6 for scene rows)')
  parser.add_argument('--seed', type=int, default=0,
                      help='picks which examples are shown')
  parser.add_argument('--scale', type=int, default=None,
                      help='pixel upscaling (default: tiles of >= 96 px)')
  parser.add_argument('--data_dir', default=None, help='TFDS data dir')
  args = parser.parse_args(argv)
  kwargs = {'data_dir': args.data_dir} if args.data_dir else {}
  source = visgen.data.get_source(args.name, split=args.split, **kwargs)
  first = source[0]
  is_rows = 'instance_mask' in first or 'video' in first
  num = min(len(source), args.num or (6 if is_rows else 16))
  rng = np.random.default_rng(args.seed)
  idx = np.sort(rng.choice(len(source), size=num, replace=False))
  examples = [source[int(i)] for i in idx]
  side = examples[0]['image'].shape[0]
  scale = args.scale or max(1, math.ceil(96 / side))
  image, texts = compose(args.name, examples, scale=scale)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  image.save(args.out)
  if any(texts):
    with open(os.path.splitext(args.out)[0] + '.txt', 'w') as f:
      f.write(''.join(f'{int(i)}\t{t}\n' for i, t in zip(idx, texts)))
  print(f'wrote {args.out} ({num} examples of {args.name}/{args.split})')
  return args.out


if __name__ == '__main__':
  main(sys.argv[1:])
