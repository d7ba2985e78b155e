"""Host-side tokenisation: strings in examples -> fixed-length token ids.

Strings (captions, instructions) never go to the devices. A tokenizer named
in the config turns each listed string entry `k` of an example into
`k_tokens` (int32 [max_len], 0-padded) and `k_mask` (bool [max_len], True on
real tokens) inside the grain pipeline, before batching:

  config.data.tokenizer = dict(name='scene_words', max_len=24,
                               keys=('caption',))

`scene_words` is a word-level tokenizer whose vocabulary is the closed
grammar of the scene world (`visgen.data.shapes` captions, `shapes_edit`
instructions): every caption tokenises exactly and decodes back to itself.
A word outside the vocabulary, or a text longer than `max_len`, raises a
ValueError naming it (a silent <unk> would hide a data/grammar mismatch).
New tokenizers (e.g. a text encoder's BPE) register in `TOKENIZERS`.
"""

import re
from typing import Any
from typing import Callable
from typing import Sequence

import numpy as np

from visgen.registry import Registry

TOKENIZERS = Registry('tokenizer')
PAD = '<pad>'
_WORDS = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")


def split_words(text: str) -> list[str]:
  """Lower-cased words; punctuation marks are words of their own."""
  return _WORDS.findall(str(text).lower())


class WordTokenizer:
  """Word-level tokenizer over a fixed vocabulary; id 0 is padding."""

  def __init__(self, vocab: Sequence[str], *, max_len: int, name: str):
    words = [w for w in dict.fromkeys(vocab) if w != PAD]
    self.vocab = (PAD,) + tuple(words)
    self.ids = {w: i for i, w in enumerate(self.vocab)}
    if max_len < 1:
      raise ValueError(f'tokenizer max_len must be >= 1, got {max_len}.')
    self.max_len = int(max_len)
    self.name = name

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)

  def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [max_len], mask bool [max_len]) of one text."""
    words = split_words(text)
    unknown = sorted({w for w in words if w not in self.ids})
    if unknown:
      raise ValueError(
          f'Tokenizer {self.name!r}: unknown words {unknown} in {text!r}. '
          f'Its vocabulary ({self.vocab_size - 1} words) is '
          f'{", ".join(self.vocab[1:])}; use a tokenizer that covers this '
          'data.')
    if len(words) > self.max_len:
      raise ValueError(
          f'Tokenizer {self.name!r}: {text!r} has {len(words)} tokens, more '
          f'than max_len={self.max_len}; raise config.data.tokenizer.max_len.')
    ids = np.zeros(self.max_len, np.int32)
    ids[:len(words)] = [self.ids[w] for w in words]
    mask = np.zeros(self.max_len, bool)
    mask[:len(words)] = True
    return ids, mask

  def decode(self, ids: Sequence[int]) -> str:
    """The text of ids (padding dropped; no space before punctuation)."""
    words = [self.vocab[int(i)] for i in ids if int(i) != 0]
    return re.sub(r' ([^\sa-z0-9\'])', r'\1', ' '.join(words))


def scene_vocabulary() -> tuple[str, ...]:
  """Every word the scene grammar (captions and edit instructions) uses."""
  from visgen.data import shapes  # pylint: disable=g-import-not-at-top
  from visgen.data import shapes_edit  # pylint: disable=g-import-not-at-top

  words = ['a', ',', 'which', 'is', 'of', 'left', 'right', 'above', 'below',
           'make', 'move', 'the', 'to', 'up', 'down']
  words += list(shapes.SIZES) + list(shapes.COLOUR_NAMES) + list(
      shapes.SHAPES) + list(shapes_edit.DIRECTIONS)
  return tuple(dict.fromkeys(w for phrase in words
                             for w in split_words(phrase)))


@TOKENIZERS.register('scene_words')
def _scene_words(*, max_len: int = 24) -> WordTokenizer:
  return WordTokenizer(scene_vocabulary(), max_len=max_len,
                       name='scene_words')


@TOKENIZERS.register('hf')
def _hf(*, path: str = 'minilm', max_len: int = 32):
  """A pretrained encoder's tokenizer.json (`visgen.data.hf_tokenize`)."""
  from visgen.data import hf_tokenize  # pylint: disable=g-import-not-at-top
  return hf_tokenize.HFTokenizer(path, max_len=max_len, name='hf')


def get_tokenizer(cfg: Any) -> WordTokenizer:
  """The tokenizer of `config.data.tokenizer` (a name or a dict)."""
  kw = {'name': cfg} if isinstance(cfg, str) else dict(cfg)
  kw.pop('keys', None)
  name = kw.pop('name', None)
  if name is None:
    raise ValueError('config.data.tokenizer needs a "name"; valid: '
                     f'{", ".join(TOKENIZERS.names())}.')
  return TOKENIZERS.build(name, **kw)


def make_hook(cfg: Any) -> Callable[[dict], dict]:
  """Per-example map adding `<key>_tokens` / `<key>_mask` for each key.

  `cfg`: a tokenizer name or dict(name=..., keys=('caption',), **kwargs).
  """
  tok = get_tokenizer(cfg)
  keys = ('caption',) if isinstance(cfg, str) else tuple(
      dict(cfg).get('keys') or ('caption',))

  def hook(example: dict) -> dict:
    out = dict(example)
    for k in keys:
      if k not in example:
        raise KeyError(
            f'config.data.tokenizer.keys names {k!r}, but the examples have '
            f'no such entry; they have {", ".join(sorted(example))}.')
      out[f'{k}_tokens'], out[f'{k}_mask'] = tok.encode(str(example[k]))
    return out

  return hook
