r"""The PyTorch peer of `python -m visgen.bench --peer=torch`.

Builds the PyTorch twin of the benchmark's model (`torch_dit.DiT` or
`torch_unet.UNet`, same shape and parameter count as visgen's) and runs the
same training step as visgen's generation task with the bench config:

  x0 = uint8 / 127.5 - 1; labels -> null class with p = label_dropout;
  t ~ U[0, 1], eps ~ N(0, I); x_t = (1 - t) x0 + t eps (linear path);
  loss = mean (f(x_t, t, y) - (eps - x0))^2 (velocity target, uniform
  weighting); clip the global gradient norm; AdamW (lr, b1, b2, eps,
  decoupled weight decay as visgen's optim config); EMA of every decay
  ema <- d ema + (1 - d) params.

Precision: 'float32', or 'bfloat16' as `torch.autocast('cpu', bf16)` with
fp32 parameters and optimizer (the usual PyTorch mixed precision). Optional
`torch.compile` of the network (default mode). Sampling: `steps` Euler steps
of the velocity ODE from t = 1 to 0 with classifier-free guidance (the
conditional and null halves in one batched call, u + s (c - u)), no grad.

The parent process (visgen.bench) talks to it over a pipe, one JSON object
per line, so that visgen and the peer can alternate measurement rounds
without recompiling:

  python benchmarks/torch_peer.py --serve --spec='{...}'
    -> {"ready": true, "params": N, ...}      (after the warm-up steps)
    <- {"cmd": "train", "steps": 3}   -> {"times": [...]}
    <- {"cmd": "sample", "repeats": 1} -> {"times": [...], "warmup_s": ...}
    <- {"cmd": "exit"}                -> {"maxrss_gib": ...}
  python benchmarks/torch_peer.py --count_params --spec='{...}'
    -> {"params": N}
"""

import argparse
import json
import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# pylint: disable=g-import-not-at-top,wrong-import-position
import torch
import torch.nn.functional as F


def build_model(spec: dict) -> torch.nn.Module:
  model = dict(spec['model'])
  name = model.pop('name')
  if name == 'dit':
    from torch_dit import DiT
    return DiT(**model)
  if name == 'unet':
    from torch_unet import UNet
    return UNet(**model)
  raise ValueError(f'No PyTorch peer for model {name!r} (dit, unet).')


def n_params(module: torch.nn.Module) -> int:
  return sum(p.numel() for p in module.parameters())


class Peer:
  """Model, optimizer, EMA, fixed synthetic batch; timed steps."""

  def __init__(self, spec: dict):
    torch.manual_seed(0)
    self.spec = spec
    self.model = build_model(spec)
    self.num_classes = int(spec.get('num_classes', 0))
    self.p_drop = float(spec.get('label_dropout', 0.0))
    self.bf16 = 'bfloat16' in str(spec.get('dtype', 'float32'))
    opt = spec['optim']
    self.params = [p for p in self.model.parameters() if p.requires_grad]
    self.opt = torch.optim.AdamW(
        self.params, lr=opt['lr'], betas=(opt['b1'], opt['b2']),
        eps=opt['eps'], weight_decay=opt.get('weight_decay', 0.0),
        foreach=True)
    self.clip = float(opt.get('grad_clip') or 0.0)
    self.decays = [float(d) for d in spec.get('ema_decays', ())]
    self.emas = [[p.detach().clone() for p in self.params]
                 for _ in self.decays]
    self.net = (torch.compile(self.model) if spec.get('compile')
                else self.model)
    b, shape = int(spec['batch']), tuple(spec['x_shape'])
    g = torch.Generator().manual_seed(0)
    self.images = torch.randint(0, 256, (b,) + shape, generator=g,
                                dtype=torch.uint8)
    self.labels = torch.randint(0, max(self.num_classes, 1), (b,),
                                generator=g)

  def autocast(self):
    return torch.autocast('cpu', dtype=torch.bfloat16, enabled=self.bf16)

  def loss(self):
    x0 = self.images.float() / 127.5 - 1.0
    b = x0.shape[0]
    labels = self.labels
    if self.num_classes and self.p_drop > 0:
      labels = torch.where(torch.rand(b) < self.p_drop,
                           torch.full_like(labels, self.num_classes), labels)
    t = torch.rand(b)
    eps = torch.randn_like(x0)
    tb = t.view(-1, *([1] * (x0.ndim - 1)))
    x_t = (1 - tb) * x0 + tb * eps
    with self.autocast():
      pred = self.net(x_t, t, labels if self.num_classes else None)
    return F.mse_loss(pred.float(), eps - x0)

  def train_step(self) -> float:
    loss = self.loss()
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    if self.clip:
      torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
    self.opt.step()
    with torch.no_grad():
      for d, ema in zip(self.decays, self.emas):
        torch._foreach_lerp_(ema, self.params, 1.0 - d)  # pylint: disable=protected-access
    return loss.item()

  def timed_steps(self, steps: int) -> tuple[list[float], list[float]]:
    times, losses = [], []
    for _ in range(steps):
      t0 = time.perf_counter()
      losses.append(self.train_step())
      times.append(time.perf_counter() - t0)
    return times, losses

  @torch.inference_mode()
  def sample(self) -> torch.Tensor:
    s = self.spec['sample']
    n, steps, scale = int(s['n']), int(s['steps']), float(s['cfg_scale'])
    shape = tuple(self.spec['x_shape'])
    x = torch.randn((n,) + shape)
    labels = torch.arange(n) % max(self.num_classes, 1)
    lab2 = torch.cat([labels, torch.full_like(labels, self.num_classes)])
    ts = torch.linspace(1.0, 0.0, steps + 1)
    for i in range(steps):
      xx = torch.cat([x, x])
      with self.autocast():
        v = self.net(xx, ts[i].expand(2 * n),
                     lab2 if self.num_classes else None).float()
      c, u = v.chunk(2)
      x = x + (ts[i + 1] - ts[i]) * (u + scale * (c - u))
    return x


def maxrss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def serve(spec: dict, out) -> None:
  def reply(obj):
    out.write(json.dumps(obj) + '\n')
    out.flush()

  t0 = time.perf_counter()
  peer = Peer(spec)
  warm, losses = peer.timed_steps(int(spec.get('warmup_steps', 2)))
  reply(dict(ready=True, params=n_params(peer.model), torch=torch.__version__,
             threads=torch.get_num_threads(), compile=bool(spec.get(
                 'compile')), bf16=peer.bf16, warmup_times_s=warm,
             setup_s=time.perf_counter() - t0, losses=losses))
  for line in sys.stdin:
    cmd = json.loads(line)
    if cmd['cmd'] == 'train':
      times, losses = peer.timed_steps(int(cmd['steps']))
      reply(dict(times=times, losses=losses))
    elif cmd['cmd'] == 'sample':
      warmup = None
      if not getattr(peer, 'sample_warm', False):
        t1 = time.perf_counter()
        peer.sample()
        warmup = time.perf_counter() - t1
        peer.sample_warm = True
      times = []
      for _ in range(int(cmd.get('repeats', 1))):
        t1 = time.perf_counter()
        x = peer.sample()
        times.append(time.perf_counter() - t1)
      reply(dict(times=times, warmup_s=warmup,
                 finite=bool(torch.isfinite(x).all())))
    elif cmd['cmd'] == 'exit':
      reply(dict(maxrss_gib=maxrss_gib()))
      return
    else:
      reply(dict(error=f'unknown command {cmd["cmd"]!r}'))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--spec', required=True, help='JSON spec (see Peer).')
  ap.add_argument('--serve', action='store_true')
  ap.add_argument('--count_params', action='store_true')
  args = ap.parse_args()
  spec = json.loads(args.spec)
  if args.count_params:
    print(json.dumps(dict(params=n_params(build_model(spec)))))
    return
  # The protocol owns the real stdout; anything torch prints goes to stderr.
  out = os.fdopen(os.dup(1), 'w')
  os.dup2(2, 1)
  serve(spec, out)


if __name__ == '__main__':
  main()
