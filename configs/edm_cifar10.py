r"""EDM (Karras et al., 2022) on CIFAR-10, unconditional.

  python -m visgen.main --config=configs/edm_cifar10.py --workdir=$W

EDM's recipe (Karras et al. 2022, Table 1, "Ours"): path 'edm' (alpha = 1,
sigma in [0.002, 80], rho = 7 grid), sigma_data = 0.5, log-normal training
noise ln(sigma) ~ N(P_mean = -1.2, P_std = 1.2), EDM's lambda(sigma)
weighting, F-prediction (prediction 'edm': D = c_skip x + c_out F) with the
input preconditioning c_in and the noise conditioning c_noise = ln(sigma) / 4
(`precond='edm'`; the time embedding reads c_noise unscaled: t_scale = 1).
Sampling: EDM's deterministic Heun (sampler 'edm', S_churn = 0) over the 18
noise levels 80 ... 0.002 (17 Heun steps, 34 NFE) and the final Euler step to
sigma = 0, which is exactly D(x; 0.002) (`denoise_final`, 1 NFE): 35 NFE.
DDPM++ is replaced by the ADM U-Net; batch 512, lr 1e-3, EMA half-life about
0.5 Mimg; no augmentation pipeline.
"""

from visgen import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False)
  c = config_lib.base_config()
  c.total_steps = 390_000  # 200 Mimg at batch 512.
  c.ckpt_every = 10_000
  c.keep_every = 50_000
  c.ema_decays = (0.99965,)
  c.path = dict(name='edm', sigma_min=0.002, sigma_max=80.0, rho=7.0,
                sigma_data=0.5)
  c.prediction = 'edm'
  c.precond = 'edm'  # c_in x and c_noise into the network (loss and sampler).
  c.weighting = dict(name='edm')
  c.time_dist = dict(name='lognormal_sigma', p_mean=-1.2, p_std=1.2)
  c.model = dict(name='unet', input_size=32, in_channels=3,
                 model_channels=128, channel_mult=(2, 2, 2),
                 num_res_blocks=4, attention_resolutions=(16,), dropout=0.13)
  c.model.dtype = 'float32'  # 'bfloat16': bf16 compute, fp32 params.
  c.model.t_scale = 1.0  # EDM embeds c_noise = ln(sigma) / 4 as it is.
  c.optim = config_lib.optim(lr=1e-3, warmup_steps=10_000, grad_clip=0.0)
  # The 'edm' path's uniform t grid is the Karras rho = 7 schedule.
  c.sampler = dict(name='edm', steps=17, grid='uniform', S_churn=0.0,
                   denoise_final=True)
  config_lib.cifar10(c, runlocal=arg.runlocal, batch_size=512)
  if arg.runlocal:
    config_lib.tiny_unet(c)
  return c
