"""Any conditioning through the pipeline: strings, tokens, images, actions,
frame stacks; batch specs; the scene-world sources end to end."""

import jax
import ml_collections as mlc
import numpy as np
import pytest

from visgen import data
from visgen import sharding
from visgen.data import pipeline
from visgen.data import shapes
from visgen.data import shapes_edit
from visgen.data import tokenize


@pytest.fixture(scope='module')
def tok():
  return tokenize.get_tokenizer(dict(name='scene_words', max_len=24))


def test_scene_words_cover_the_grammar_and_round_trip(tok):
  texts = [shapes.caption(shapes.sample_scene(
      shapes.split_rng('train', 0, i), 32)) for i in range(150)]
  texts += [shapes_edit.sample_edit(shapes.split_rng('train', 1, i), 32)[4]
            for i in range(150)]
  longest = 0
  for text in texts:
    ids, mask = tok.encode(text)
    assert ids.dtype == np.int32 and ids.shape == (24,)
    assert mask.dtype == bool and mask.shape == (24,)
    n = int(mask.sum())
    longest = max(longest, n)
    assert mask[:n].all() and not mask[n:].any()  # Real tokens, then pad.
    assert (ids[:n] > 0).all() and (ids[n:] == 0).all()
    assert tok.decode(ids) == text
  # A 3-object caption: 4 + 2 + 4 + 1 (',') + 2 + 2 + 4 words.
  assert longest == 19
  ids, _ = tok.encode('a small red circle')
  assert [tok.vocab[i] for i in ids[:4]] == ['a', 'small', 'red', 'circle']


def test_tokenizer_errors(tok):
  with pytest.raises(ValueError, match=r"unknown words \['hexagon', 'purple'"
                     r"\] in 'a purple hexagon'.*vocabulary"):
    tok.encode('a purple hexagon')
  short = tokenize.get_tokenizer(dict(name='scene_words', max_len=3))
  with pytest.raises(ValueError, match='has 4 tokens, more than max_len=3'):
    short.encode('a small red circle')
  with pytest.raises(ValueError, match='Unknown tokenizer .*scene_words'):
    tokenize.get_tokenizer('bpe')
  hook = tokenize.make_hook(dict(name='scene_words', keys=('instruction',)))
  with pytest.raises(KeyError, match="names 'instruction'.*have caption"):
    hook({'caption': np.str_('a small red circle'), 'image': np.zeros(1)})


def _sources():
  # Tiny variants of every scene-world source (16 px, few frames).
  return {
      'shapes': data.get_source('shapes', split='train', resolution=16,
                                num_examples=12),
      'shapes_edit': data.get_source('shapes_edit', split='train',
                                     resolution=16, num_examples=12),
      'shapes_video': data.get_source('shapes_video', split='train',
                                      resolution=16, num_examples=12,
                                      num_frames=3),
      'shapes_world': data.get_source('shapes_world', split='train',
                                      resolution=16, num_examples=12,
                                      num_frames=3, map_factor=2),
  }


TOKENIZED = {'shapes': ('caption',), 'shapes_edit': ('caption',
                                                     'instruction'),
             'shapes_video': ('caption',), 'shapes_world': ()}


@pytest.mark.parametrize('name', sorted(TOKENIZED))
def test_scene_sources_flow_with_every_key_and_resume(name):
  source = _sources()[name]
  keys = TOKENIZED[name]
  cfg = mlc.ConfigDict(dict(batch_size=4, flip=False, resolution=16))
  if keys:
    cfg.tokenizer = dict(name='scene_words', max_len=24, keys=keys)
  make = lambda: pipeline.make_iterator_from_config(source, cfg, seed=3)
  it = make()
  batch = next(it)
  state = it.get_state()
  want = [next(it) for _ in range(3)]  # Crosses an epoch boundary.
  example = source[0]
  expected = {k: (np.shape(v), np.asarray(v).dtype)
              for k, v in example.items()}
  for k in keys:
    expected[f'{k}_tokens'] = ((24,), np.dtype(np.int32))
    expected[f'{k}_mask'] = ((24,), np.dtype(bool))
  assert sorted(batch) == sorted(expected)
  for k, (shape, dtype) in expected.items():
    assert batch[k].shape == (4,) + shape, k
    if dtype.kind == 'U':
      assert batch[k].dtype.kind == 'U', k  # Strings stay strings.
    else:
      assert batch[k].dtype == dtype, k
  # The tokens are those of this batch's own strings.
  tok = tokenize.get_tokenizer('scene_words')
  for k in keys:
    for text, ids in zip(batch[k], batch[f'{k}_tokens']):
      assert tok.decode(ids) == text
  # A spec built from the source passes; resume reproduces the stream.
  pipeline.check_batch(batch, {k: ((4,) + s, d if d.kind != 'U' else str)
                               for k, (s, d) in expected.items()})
  fresh = make()
  fresh.set_state(state)
  for w, g in zip(want, [next(fresh) for _ in range(3)]):
    assert sorted(w) == sorted(g)
    for k in w:
      np.testing.assert_array_equal(w[k], g[k])


def test_numeric_entries_shard_like_images_strings_stay_on_host():
  source = _sources()['shapes_edit']
  cfg = dict(batch_size=4, tokenizer=dict(name='scene_words',
                                          keys=('instruction',)))
  batch = next(pipeline.make_iterator_from_config(source, cfg, seed=0))
  mesh = sharding.make_mesh([('data', -1), ('fsdp', 1)])
  dev = pipeline.device_entries(batch, ['image', 'edited_image', 'edit_mask',
                                        'instruction_tokens',
                                        'instruction_mask'])
  glob = pipeline.make_global_array(dev, mesh, batch_axes=('data', 'fsdp'))
  for k, v in glob.items():
    assert isinstance(v, jax.Array), k
    assert v.sharding.spec == jax.sharding.PartitionSpec(('data', 'fsdp')), k
    np.testing.assert_array_equal(np.asarray(v), batch[k])
  host = pipeline.make_global_array({'instruction': batch['instruction']},
                                    mesh, batch_axes=('data',))
  assert isinstance(host['instruction'], np.ndarray)
  assert 'instruction' not in pipeline.device_entries(batch)
  with pytest.raises(ValueError, match="'instruction' holds strings.*"
                     "instruction_tokens"):
    pipeline.device_entries(batch, ['image', 'instruction'])
  with pytest.raises(KeyError, match="no entry 'control'"):
    pipeline.device_entries(batch, ['control'])


def test_per_host_slices_of_conditioning_reassemble():
  source = _sources()['shapes_world']
  glob = next(pipeline.make_iterator(source, batch_size=4, seed=1))
  hosts = [next(pipeline.make_iterator(source, batch_size=4, seed=1,
                                       process_index=p, process_count=2))
           for p in range(2)]
  for k in ('video', 'actions', 'camera', 'semantic_masks'):
    assert hosts[0][k].shape[0] == 2
    np.testing.assert_array_equal(
        np.concatenate([h[k] for h in hosts]), glob[k])


def test_check_batch_names_key_and_shapes():
  batch = {'image': np.zeros((4, 16, 16, 3), np.uint8),
           'caption_tokens': np.zeros((4, 20), np.int32),
           'caption': np.array(['a'] * 4)}
  pipeline.check_batch(batch, {
      'image': ((4, 16, 16, 3), np.uint8),
      'caption_tokens': jax.ShapeDtypeStruct((None, 20), np.int32),
      'caption': ((4,), str)})
  with pytest.raises(ValueError) as e:
    pipeline.check_batch(batch, {
        'image': ((4, 32, 32, 3), np.uint8),
        'caption_tokens': ((4, 24), np.int32),
        'control': ((4, 16, 16, 1), np.uint8),
        'caption': ((4,), np.int32)})
  msg = str(e.value)
  assert ("entry 'image': expected (4, 32, 32, 3) uint8, found "
          '(4, 16, 16, 3) uint8') in msg
  assert "entry 'caption_tokens': expected (4, 24) int32, found (4, 20)" in msg
  assert "no entry 'control' (expected (4, 16, 16, 1) uint8)" in msg
  assert "entry 'caption': expected (4,) int32, found (4,) <U1" in msg
  assert 'The batch has: caption, caption_tokens, image.' in msg


def test_source_kwargs_drop_pipeline_entries():
  cfg = dict(name='shapes', resolution=16, batch_size=8, flip=True,
             num_threads=2, tokenizer='scene_words')
  assert pipeline.source_kwargs(cfg) == {'resolution': 16}


def test_example_transforms_are_the_iterators_hooks():
  source = _sources()['shapes']
  cfg = dict(batch_size=2, tokenizer=dict(name='scene_words', max_len=20))
  assert pipeline.example_transforms(dict(batch_size=2)) == []
  (hook,) = pipeline.example_transforms(cfg)
  it = pipeline.make_iterator_from_config(source, cfg, seed=0,
                                          shuffle=False)
  batch = next(it)
  for i in range(2):
    ex = hook(source[i])
    np.testing.assert_array_equal(ex['caption_tokens'],
                                  batch['caption_tokens'][i])
    np.testing.assert_array_equal(ex['caption_mask'], batch['caption_mask'][i])
