"""Noise-aware classifiers p_phi(y | x_t, t) for classifier guidance (ADM).

The network is `visgen.models.classifier.NoisyClassifier` (model
'noisy_classifier'); its task is `visgen.tasks.noisy_classifier`. This module
turns a trained classifier into the log-probability that
`visgen.samplers.guidance` differentiates.
"""

from typing import Any
from typing import Callable

import jax
import jax.numpy as jnp

from visgen.models.classifier import NoisyClassifier

__all__ = ['NoisyClassifier', 'log_prob_fn']


def log_prob_fn(apply: Callable, params: Any) -> Callable:
  """`(x_t, t_B, cond) -> log p_phi(cond['label'] | x_t, t) (B,)` of a net.

  The log-classifier form of `samplers.guidance`: the sum over the batch of
  this function has the per-example gradients as its gradient, because
  example i's output depends on x_t[i] only.
  """

  def fn(x_t, t, cond):
    if cond is None or 'label' not in cond:
      raise ValueError("The classifier's log-probability needs "
                       "cond['label'] (the class to guide towards).")
    logits = apply(params, x_t, t, {})
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    labels = cond['label'].astype(jnp.int32)
    return jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]

  return fn
