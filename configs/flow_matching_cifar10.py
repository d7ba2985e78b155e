r"""Flow Matching / rectified flow (Lipman et al., 2023; Liu et al., 2023)
on CIFAR-10.

  python -m visgen.main --config=configs/flow_matching_cifar10.py --workdir=$W

Path 'linear' (x_t = (1 - t) x0 + t eps), velocity prediction, uniform
weighting and t; Heun on the ODE. U-Net as in the paper's CIFAR runs.
"""

from visgen import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False)
  c = config_lib.base_config()
  c.total_steps = 400_000
  c.ckpt_every = 10_000
  c.keep_every = 50_000
  c.ema_decays = (0.9999,)
  c.path = dict(name='linear')
  c.prediction = 'velocity'
  c.weighting = dict(name='uniform')
  c.time_dist = dict(name='uniform')
  c.model = dict(name='unet', input_size=32, in_channels=3,
                 model_channels=128, channel_mult=(1, 2, 2, 2),
                 num_res_blocks=2, attention_resolutions=(16,), dropout=0.1)
  c.model.dtype = 'float32'  # 'bfloat16': bf16 compute, fp32 params.
  c.optim = config_lib.optim(lr=2e-4, warmup_steps=5000, grad_clip=1.0)
  c.sampler = dict(name='heun', steps=100)
  config_lib.cifar10(c, runlocal=arg.runlocal)
  if arg.runlocal:
    config_lib.tiny_unet(c)
  return c
