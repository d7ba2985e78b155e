r"""SiT (Ma et al., 2024) on CIFAR-10: a DiT trained as a stochastic
interpolant, class-conditional with classifier-free guidance.

  python -m visgen.main --config=configs/sit_cifar10.py:variant=B --workdir=$W

Path 'gvp' by default (alpha = cos(pi t / 2), sigma = sin(pi t / 2); ':path=
linear' for SiT's linear interpolant), velocity prediction, uniform weighting
and t. Note SiT puts data at t = 1; visgen's t is SiT's 1 - t (see
interpolants/base.py). DiT backbone with patch 2 on 32x32 pixels.
"""

from visgen import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, variant='S', path='gvp', runlocal=False)
  c = config_lib.base_config()
  c.total_steps = 400_000
  c.ckpt_every = 10_000
  c.keep_every = 50_000
  c.ema_decays = (0.9999,)
  c.path = dict(name=arg.path)
  c.prediction = 'velocity'
  c.weighting = dict(name='uniform')
  c.time_dist = dict(name='uniform')
  c.model = dict(name='dit', input_size=32, in_channels=3, patch=2,
                 variant=arg.variant, num_classes=10)
  c.model.dtype = 'float32'  # 'bfloat16': bf16 compute, fp32 params.
  c.optim = config_lib.optim(lr=1e-4, grad_clip=1.0)
  c.sampler = dict(name='heun', steps=125, cfg_scale=1.5,
                   cfg_rescale=0.0, cfg_interval=(0.0, 1.0), cfg_channels=0)
  config_lib.cifar10(c, runlocal=arg.runlocal, num_classes=10)
  if arg.runlocal:
    c.model.update(variant=None, width=32, depth=1, heads=2,
                   input_size=c.task.x_shape[0],
                   num_classes=c.task.num_classes)
  return c
