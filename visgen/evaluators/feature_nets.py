r"""Feature networks: FID Inception, and nets trained here on embedded data.

  python -m visgen.evaluators.feature_nets --net=digits   # or shapes

trains (or loads) the network and prints its test accuracy and its
real-against-real floor. Trained nets are cached as
`$VISGEN_CACHE/feature_nets/<net>_<hash>.npz` (+ `.json` with accuracy and
floors), VISGEN_CACHE defaulting to ~/.cache/visgen; `<hash>` covers the
whole training recipe, so a changed recipe retrains. Training is seeded and
runs automatically on first use (2 shared CPU cores: digits 15-50 s,
shapes 3 min, depending on load).

* `digits`: 10-way classifier of scikit-learn digits, trained on the train
  split (1500) at both 8x8 and 16x16 (PIL-resized by the data source), input
  resized to 16x16 grey. Features: the 128-d penultimate layer. Metrics on it
  are reported as digits-FID, digits-IS, ..., never as Inception metrics.
* `shapes`: scene-attribute net for the procedural `shapes` world: a 4-way
  head for the dominant shape (`label`) and an 11-bit multi-label head (each
  of the 4 shapes present, each of the 6 colours present, some object large),
  input 32x32 RGB, first conv stride 2, average and max pooling. Features:
  the 128-d penultimate layer.
* `inception`: the FID Inception port (pool 2048-d, sFID spatial, logits when
  the weight file has them).
"""

import argparse
import dataclasses
import hashlib
import json
import os
import time

import flax.nnx as nnx
import flax.traverse_util as traverse_util
import jax
import numpy as np
import optax

from visgen import registry
from visgen.evaluators import classifier
from visgen.evaluators import compare
from visgen.evaluators import datasets
from visgen.evaluators import inception

FEATURE_NETS = registry.Registry('feature net')
_RECIPE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Recipe:
  """Everything that determines a trained feature net (hashed for the cache)."""

  dataset: str
  train_sizes: tuple[int, ...]
  input_size: int
  channels: int
  num_classes: int
  num_attributes: int
  widths: tuple[int, ...] = (16, 32, 64)
  first_stride: int = 1
  max_pool: bool = False
  feature_dim: int = 128
  num_train: int | None = None
  num_test: int | None = None
  steps: int = 500
  batch_size: int = 128
  learning_rate: float = 3e-3
  seed: int = 0
  version: int = _RECIPE_VERSION

  def digest(self) -> str:
    return hashlib.sha1(repr(self).encode()).hexdigest()[:10]


RECIPES = {
    'digits': Recipe(dataset='digits', train_sizes=(8, 16), input_size=16,
                     channels=1, num_classes=10, num_attributes=0),
    'shapes': Recipe(dataset='shapes', train_sizes=(32,), input_size=32,
                     channels=3, num_classes=4, num_attributes=11,
                     widths=(32, 64, 128), first_stride=2, max_pool=True,
                     num_train=8000, num_test=1000, steps=1500),
}


def _attribute_targets(objects_NxKx4: np.ndarray) -> np.ndarray:
  """(N, 11) multi-hot: shape present (4), colour present (6), any large."""
  present = objects_NxKx4[..., 0] == 1
  out = np.zeros((objects_NxKx4.shape[0], 11), np.float32)
  for k in range(objects_NxKx4.shape[1]):
    rows = np.nonzero(present[:, k])[0]
    out[rows, objects_NxKx4[rows, k, 1]] = 1.0
    out[rows, 4 + objects_NxKx4[rows, k, 2]] = 1.0
    out[rows, 10] = np.maximum(out[rows, 10], objects_NxKx4[rows, k, 3])
  return out


def _split_data(recipe: Recipe, split: str, size: int) -> dict:
  n = recipe.num_train if split == 'train' else recipe.num_test
  d = datasets.load_images(recipe.dataset, split=split, size=size,
                           num_examples=n)
  if recipe.num_attributes:
    d['attributes'] = _attribute_targets(d.pop('objects'))
  return d


def _build(recipe: Recipe, seed: int) -> classifier.FeatureCNN:
  return classifier.FeatureCNN(
      channels=recipe.channels, widths=recipe.widths,
      feature_dim=recipe.feature_dim, num_classes=recipe.num_classes,
      num_attributes=recipe.num_attributes, first_stride=recipe.first_stride,
      max_pool=recipe.max_pool, rngs=nnx.Rngs(seed))


def _train(recipe: Recipe) -> classifier.FeatureCNN:
  """Seeded Adam training on the train split (all `train_sizes` mixed)."""
  parts = [_split_data(recipe, 'train', s) for s in recipe.train_sizes]
  prep = lambda im: classifier.prepare(
      im, input_size=recipe.input_size, channels=recipe.channels)
  x = np.concatenate([np.asarray(prep(p['image'])) for p in parts])
  y = np.concatenate([p['label'] for p in parts])
  attrs = (np.concatenate([p['attributes'] for p in parts])
           if recipe.num_attributes else np.zeros((len(y), 0), np.float32))
  model = _build(recipe, recipe.seed)
  graphdef, params = nnx.split(model)
  tx = optax.adam(optax.cosine_decay_schedule(recipe.learning_rate,
                                              recipe.steps))
  opt_state = tx.init(params)

  def loss_fn(params, xb, yb, ab):
    out = nnx.merge(graphdef, params)(xb)
    loss = optax.softmax_cross_entropy_with_integer_labels(
        out['logits'], yb).mean()
    if recipe.num_attributes:
      loss += optax.sigmoid_binary_cross_entropy(out['attr_logits'], ab).mean()
    return loss

  @jax.jit
  def step(params, opt_state, xb, yb, ab):
    loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb, ab)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(recipe.seed)
  for _ in range(recipe.steps):
    idx = rng.choice(len(y), recipe.batch_size, replace=False)
    # One-pixel random shifts: the generated images we score are not
    # perfectly centred like the training digits.
    shift = rng.integers(-1, 2, size=2)
    xb = np.roll(x[idx], tuple(shift), axis=(1, 2))
    params, opt_state, _ = step(params, opt_state, xb, y[idx], attrs[idx])
  return nnx.merge(graphdef, params)


def cache_path(name: str) -> str:
  return os.path.join(inception.cache_dir(), 'feature_nets',
                      f'{name}_{RECIPES[name].digest()}')


class TrainedNet:
  """A cached classifier used as a feature space (digits, shapes)."""

  def __init__(self, name: str, *, batch_size: int = 256):
    self.name = name
    self.metric_prefix = f'{name}-'
    self.recipe = RECIPES[name]
    self.has_spatial = False
    self.has_logits = True
    self.batch_size = batch_size
    path = cache_path(name)
    self._meta_path = path + '.json'
    if os.path.exists(path + '.npz'):
      model = _build(self.recipe, 0)
      with np.load(path + '.npz') as f:
        flat = {tuple(k.split('/')): f[k] for k in f.files}
      state = nnx.state(model)
      nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(flat))
      nnx.update(model, state)
      with open(self._meta_path) as f:
        self.meta = json.load(f)
    else:
      t0 = time.time()
      model = _train(self.recipe)
      self.meta = dict(recipe=dataclasses.asdict(self.recipe),
                       train_seconds=round(time.time() - t0, 1), floors={})
      self._model_graph = nnx.split(model)
      self.meta['test_accuracy'] = self._test_accuracy()
      os.makedirs(os.path.dirname(path), exist_ok=True)
      self._save_meta()  # before the .npz, whose presence means "cached"
      flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model)))
      tmp = f'{path}.{os.getpid()}.tmp.npz'
      np.savez(tmp, **{'/'.join(map(str, k)): np.asarray(v)
                       for k, v in flat.items()})
      os.replace(tmp, path + '.npz')  # atomic: concurrent runs never see half
    graphdef, state = nnx.split(model)
    recipe = self.recipe

    @jax.jit
    def _apply(state, images):
      x = classifier.prepare(images, input_size=recipe.input_size,
                             channels=recipe.channels)
      return nnx.merge(graphdef, state)(x)

    self._apply, self._state = _apply, state

  def _test_accuracy(self) -> dict:
    graphdef, state = self._model_graph
    model = nnx.merge(graphdef, state)
    out = {}
    for size in self.recipe.train_sizes:
      d = _split_data(self.recipe, 'test', size)
      pred = model(classifier.prepare(d['image'],
                                      input_size=self.recipe.input_size,
                                      channels=self.recipe.channels))
      out[f'label@{size}'] = float(
          np.mean(np.argmax(pred['logits'], -1) == d['label']))
      if self.recipe.num_attributes:
        bits = np.asarray(pred['attr_logits']) > 0
        out[f'attributes@{size}'] = float(np.mean(bits == (d['attributes']
                                                            > 0.5)))
    return out

  def _save_meta(self):
    tmp = f'{self._meta_path}.{os.getpid()}.tmp'
    with open(tmp, 'w') as f:
      json.dump(self.meta, f, indent=1, sort_keys=True)
    os.replace(tmp, self._meta_path)

  def __call__(self, images_NxHxWxC: np.ndarray) -> dict[str, np.ndarray]:
    out = inception.run_padded(self._apply, self._state, images_NxHxWxC,
                               self.batch_size)
    return dict(pool=out['features'], logits=out['logits'])

  def floor(self, size: int) -> dict:
    """Real-against-real metrics: train split (ref) vs test split (sample)."""
    key = str(size)
    if key not in self.meta['floors']:
      train = _split_data(self.recipe, 'train', size)
      test = _split_data(self.recipe, 'test', size)
      m = compare.compare(self, ref_images=train['image'],
                          sample_images=test['image'])
      m['num_ref'], m['num_samples'] = len(train['image']), len(test['image'])
      self.meta['floors'][key] = m
      self._save_meta()
    return self.meta['floors'][key]


class InceptionNet:
  """The FID Inception port behind the feature-net interface."""

  name = 'inception'
  metric_prefix = ''
  has_spatial = True

  def __init__(self, weights_path: str | None = None):
    self._features = inception.InceptionFeatures(
        inception.load_params(weights_path))
    self.has_logits = self._features.has_logits

  def __call__(self, images):
    return self._features(images)

  def floor(self, size: int) -> None:
    del size
    return None


FEATURE_NETS.register('inception')(InceptionNet)
FEATURE_NETS.register('digits')(lambda: TrainedNet('digits'))
FEATURE_NETS.register('shapes')(lambda: TrainedNet('shapes'))

_LOADED = {}


def get_feature_net(name: str):
  """The named feature net (built once per process)."""
  if name not in _LOADED:
    _LOADED[name] = FEATURE_NETS.get(name)()
  return _LOADED[name]


def class_accuracy(images_uint8: np.ndarray, labels: np.ndarray, *,
                   net: str = 'digits') -> float:
  """Fraction of images the trained classifier assigns to `labels`."""
  logits = get_feature_net(net)(np.asarray(images_uint8))['logits']
  return float(np.mean(np.argmax(logits, -1) == np.asarray(labels)))


def main(argv=None):
  parser = argparse.ArgumentParser(
      prog='python -m visgen.evaluators.feature_nets')
  parser.add_argument('--net', default='digits', choices=sorted(RECIPES),
                      help='feature net to train (or load) and report')
  net = get_feature_net(parser.parse_args(argv).net)
  print(f'{net.name} feature net: {cache_path(net.name)}.npz')
  print(f'test accuracy: {net.meta["test_accuracy"]}')
  for size in net.recipe.train_sizes:
    print(f'real-against-real floor at {size}x{size} (train vs test): '
          f'{net.floor(size)}')


if __name__ == '__main__':
  main()
