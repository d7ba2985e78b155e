r"""NCSN (Song & Ermon, 2019) on CIFAR-10: denoising score matching over a
geometric noise ladder, as one point of the design space.

  python -m visgen.main --config=configs/ncsn_cifar10.py --workdir=$W

Path 've' (alpha = 1, sigma geometric in [0.01, 50]), score prediction,
lambda(sigma) = sigma^2 on the score MSE (= uniform on the eps MSE),
uniform t; sampled with the probability-flow ODE (Heun), not annealed
Langevin. NCSN++ / RefineNet is replaced by the ADM U-Net.
"""

from visgen import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False)
  c = config_lib.base_config()
  c.total_steps = 300_000
  c.ckpt_every = 10_000
  c.keep_every = 50_000
  c.ema_decays = (0.999,)
  c.path = dict(name='ve', sigma_min=0.01, sigma_max=50.0)
  c.prediction = 'score'
  c.weighting = dict(name='uniform', space='eps')
  c.time_dist = dict(name='uniform')
  c.model = dict(name='unet', input_size=32, in_channels=3,
                 model_channels=128, channel_mult=(1, 2, 2, 2),
                 num_res_blocks=2, attention_resolutions=(16,), dropout=0.1)
  c.model.dtype = 'float32'  # 'bfloat16': bf16 compute, fp32 params.
  c.optim = config_lib.optim(lr=1e-4, warmup_steps=5000, grad_clip=1.0)
  c.sampler = dict(name='heun', steps=500)
  config_lib.cifar10(c, runlocal=arg.runlocal)
  if arg.runlocal:
    config_lib.tiny_unet(c)
  return c
