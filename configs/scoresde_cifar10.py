r"""Score-SDE (Song et al., 2021) VP or VE on CIFAR-10.

  python -m visgen.main --config=configs/scoresde_cifar10.py:sde=vp --workdir=$W
  python -m visgen.main --config=configs/scoresde_cifar10.py:sde=ve --workdir=$W

Continuous-time denoising score matching with the paper's lambda(t) =
sigma(t)^2 (uniform on the eps MSE); VP: beta in [0.1, 20]; VE: sigma in
[0.01, 50]. Sampled with the probability-flow ODE. NCSN++ / DDPM++ are
replaced by the ADM U-Net of the same size class.
"""

from visgen import config_lib

PATHS = {
    'vp': dict(name='vp', beta_min=0.1, beta_max=20.0),
    've': dict(name='ve', sigma_min=0.01, sigma_max=50.0),
}


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, sde='vp', runlocal=False)
  if arg.sde not in PATHS:
    raise ValueError(f'Unknown sde {arg.sde!r}. Valid choices: vp, ve.')
  c = config_lib.base_config()
  c.total_steps = 1_300_000 if arg.sde == 've' else 800_000
  c.ckpt_every = 10_000
  c.keep_every = 50_000
  c.ema_decays = (0.9999,)
  c.path = PATHS[arg.sde]
  c.prediction = 'score'
  c.weighting = dict(name='uniform', space='eps')
  c.time_dist = dict(name='uniform')
  c.model = dict(name='unet', input_size=32, in_channels=3,
                 model_channels=128, channel_mult=(1, 2, 2, 2),
                 num_res_blocks=4, attention_resolutions=(16,), dropout=0.1)
  c.model.dtype = 'float32'  # 'bfloat16': bf16 compute, fp32 params.
  c.optim = config_lib.optim(lr=2e-4, warmup_steps=5000, grad_clip=1.0)
  c.sampler = dict(name='heun', steps=500)
  config_lib.cifar10(c, runlocal=arg.runlocal)
  if arg.runlocal:
    config_lib.tiny_unet(c)
  return c
