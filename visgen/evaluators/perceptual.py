"""An LPIPS-style perceptual distance from the project's trained feature nets.

LPIPS (Zhang et al., 2018, Eq. 1) compares the activations of a fixed
network layer by layer:

  d(x, y) = sum_l 1/(H_l W_l) sum_hw || w_l * (f^l_hw(x) - f^l_hw(y)) ||^2

with f^l unit-normalised along channels at every position. Here the network
is a feature net trained by the project (`visgen.evaluators.feature_nets`:
'shapes' for the scene world, 'digits' for digits; no download), the layers
are its three GELU conv outputs, and w_l = 1 (LPIPS's "baseline" variant,
without the linear calibration trained on human judgements, which needs the
BAPPS data set). The net's parameters are fixed constants of the returned
function: nothing optimises them and nothing saves them.
"""

from typing import Callable

from flax import nnx
import jax
import jax.numpy as jnp

from visgen.evaluators import classifier
from visgen.evaluators import feature_nets


def _unit(f, eps: float = 1e-10):
  """LPIPS's normalize_tensor: f / ||f|| over channels."""
  return f * jax.lax.rsqrt(jnp.sum(jnp.square(f), -1, keepdims=True) + eps)


def layer_features(module: classifier.FeatureCNN, x: jax.Array,
                   *, input_size: int, channels: int) -> list[jax.Array]:
  """The GELU conv activations of a FeatureCNN for images x in [-1, 1]."""
  h = classifier.prepare((x + 1.0) * 127.5, input_size=input_size,
                         channels=channels)
  out = []
  for conv in module.convs:
    h = jax.nn.gelu(conv(h))
    out.append(h)
  return out


def distance_from_module(module: classifier.FeatureCNN, *, input_size: int,
                         channels: int) -> Callable[[jax.Array, jax.Array],
                                                    jax.Array]:
  """d(x, y) -> (B,) for images in [-1, 1] (differentiable in both)."""
  graphdef, state = nnx.split(module)

  def distance(x, y):
    m = nnx.merge(graphdef, state)
    kw = dict(input_size=input_size, channels=channels)
    fx = layer_features(m, x, **kw)
    fy = layer_features(m, y, **kw)
    return sum(jnp.mean(jnp.sum(jnp.square(_unit(a) - _unit(b)), -1),
                        axis=(1, 2)) for a, b in zip(fx, fy))

  return distance


def perceptual_distance(net: str = 'shapes'):
  """The LPIPS-style distance of the trained feature net `net` (trained on
  first use and cached, see `visgen.evaluators.feature_nets`)."""
  if net not in feature_nets.RECIPES:
    raise ValueError(f'Unknown perceptual feature net {net!r}. Valid '
                     f'choices: {", ".join(sorted(feature_nets.RECIPES))}.')
  trained = feature_nets.get_feature_net(net)
  recipe = trained.recipe
  module = classifier.FeatureCNN(
      channels=recipe.channels, widths=recipe.widths,
      feature_dim=recipe.feature_dim, num_classes=recipe.num_classes,
      num_attributes=recipe.num_attributes,
      first_stride=recipe.first_stride, max_pool=recipe.max_pool,
      rngs=nnx.Rngs(0))
  nnx.update(module, trained._state)  # pylint: disable=protected-access
  return distance_from_module(module, input_size=recipe.input_size,
                              channels=recipe.channels)
