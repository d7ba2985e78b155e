"""Networks behind one functional boundary.

  model = get_model('dit', rngs=nnx.Rngs(0), patch=2, width=256, ...)
  graphdef, params = split_model(model)
  apply = make_apply(graphdef)

Every model takes `(x_t, t, cond)` with t in [0, 1] of shape (B,) and `cond`
a dict; `model.cond_keys` names the entries it consumes. Class tables have
num_classes + 1 rows, the last being the classifier-free null class.

A new model: a module here, one line in `MODELS` below (importing
visgen.models gives every model; nothing registers from elsewhere).
"""

import inspect

from flax import nnx

from visgen.models.autoencoder import AutoencoderKL
from visgen.models.classifier import NoisyClassifier
from visgen.models.controlnet import ControlNet
from visgen.models.dit import DiT
from visgen.models.functional import logical_axes
from visgen.models.functional import logical_to_spec
from visgen.models.functional import make_apply
from visgen.models.functional import split_model
from visgen.models.instruct import InstructUNet
from visgen.models.mlp import MLPDenoiser
from visgen.models.mmdit import MMDiT
from visgen.models.pixart import PixArt
from visgen.models.text_encoders import BertText
from visgen.models.text_encoders import CLIPText
from visgen.models.text_encoders import SceneText
from visgen.models.unet import UNet
from visgen.models.video_autoencoder import VideoAutoencoderKL
from visgen.models.video_dit import VideoDiT
from visgen.registry import Registry

MODELS = Registry('model')
MODELS.register('mlp')(MLPDenoiser)
MODELS.register('dit')(DiT)
MODELS.register('unet')(UNet)
MODELS.register('noisy_classifier')(NoisyClassifier)
MODELS.register('video_dit')(VideoDiT)
MODELS.register('controlnet')(ControlNet)
MODELS.register('instruct_unet')(InstructUNet)
MODELS.register('autoencoder_kl')(AutoencoderKL)
MODELS.register('video_autoencoder')(VideoAutoencoderKL)
MODELS.register('pixart')(PixArt)
MODELS.register('mmdit')(MMDiT)
MODELS.register('bert_text')(BertText)
MODELS.register('clip_text')(CLIPText)
MODELS.register('scene_text')(SceneText)


def get_model(name: str, *, rngs: nnx.Rngs, **kwargs) -> nnx.Module:
  """Builds a registered model; unknown names or kwargs raise ValueError."""
  cls = MODELS.get(name)
  params = inspect.signature(cls.__init__).parameters
  valid = sorted(k for k in params if k not in ('self', 'rngs'))
  bad = sorted(set(kwargs) - set(valid))
  if bad:
    raise ValueError(f'Model {name!r} got unknown arguments {bad}. Valid '
                     f'arguments: {", ".join(valid)}.')
  return cls(rngs=rngs, **kwargs)


__all__ = [
    'ControlNet', 'DiT', 'MLPDenoiser', 'NoisyClassifier', 'UNet', 'MODELS',
    'get_model', 'split_model', 'make_apply', 'logical_axes',
    'logical_to_spec',
]
