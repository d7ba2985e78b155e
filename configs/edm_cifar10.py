r"""EDM (Karras et al., 2022) on CIFAR-10, unconditional.

  python -m visgen.main --config=configs/edm_cifar10.py --workdir=$W

Path 'edm' (alpha = 1, sigma in [0.002, 80], rho = 7 grid), the
EDM-preconditioned prediction 'edm' (c_skip / c_out / c_in as a particular
target), EDM's lambda(sigma) weighting and log-normal sigma (P_mean = -1.2,
P_std = 1.2); Heun with 18 steps (35 NFE). DDPM++ is replaced by the ADM
U-Net; batch 512, lr 1e-3, EMA half-life about 0.5 Mimg.
"""

from visgen import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False)
  c = config_lib.base_config()
  c.total_steps = 390_000  # 200 Mimg at batch 512.
  c.ckpt_every = 10_000
  c.keep_every = 50_000
  c.ema_decays = (0.99965,)
  c.path = dict(name='edm')
  c.prediction = 'edm'
  c.weighting = dict(name='edm')
  c.time_dist = dict(name='lognormal_sigma', p_mean=-1.2, p_std=1.2)
  c.model = dict(name='unet', input_size=32, in_channels=3,
                 model_channels=128, channel_mult=(2, 2, 2),
                 num_res_blocks=4, attention_resolutions=(16,), dropout=0.13)
  c.model.dtype = 'float32'  # 'bfloat16': bf16 compute, fp32 params.
  c.optim = config_lib.optim(lr=1e-3, warmup_steps=10_000, grad_clip=0.0)
  c.sampler = dict(name='heun', steps=18)
  config_lib.cifar10(c, runlocal=arg.runlocal, batch_size=512)
  if arg.runlocal:
    config_lib.tiny_unet(c)
  return c
