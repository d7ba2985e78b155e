r"""Short probes of generator recipes on `shapes` scenes (issue 9 item 6).

  python -m experiments.shapes_probe u2_x0 \
      "{'prediction': 'x0', 'weighting': dict(name='uniform', space='velocity'),
        'sampler.name': 'euler', 'sampler.steps': 12, 'total_steps': 400}" \
      --n 300 --out /tmp/probe

Overrides configs/shapes.py by dotted keys, trains on scenes pre-rendered
once into memory (cached as OUT/<split>_<n>.npz: the probe times the model
step, not the numpy renderer), evaluates the EMA model with the shapes
feature net at the given training minutes (--evals) and at the end
(`--n` samples, so FIDs are comparable only at equal n), and writes
OUT/res_<name>.json (points with train_s, eval_s, load average, metrics;
losses; s_per_step) and OUT/grid_<name>.png (8 per class, one row per
class). `experiments.shapes_curve --add NAME=OUT/res_<name>.json` adds the
points to the curve. A research tool: not the training loop of record
(that is `python -m visgen.main --config=configs/shapes.py`).
"""
import argparse, json, os, sys, time
import numpy as np
import jax, jax.numpy as jnp
import ml_collections as mlc
from visgen import builder, config_loader, evaluations
from visgen.evaluators import in_loop
from visgen.data import shapes

p = argparse.ArgumentParser()
p.add_argument('name')
p.add_argument('overrides', default='{}')
p.add_argument('--minutes', type=float, default=6)
p.add_argument('--evals', default='')  # minutes of training at which to eval
p.add_argument('--n', type=int, default=500)
p.add_argument('--ntrain', type=int, default=50000)
p.add_argument('--steps', type=int, default=100000)
p.add_argument('--stop_step', type=int, default=0,
               help='stop (and evaluate) at this step, whatever the clock')
p.add_argument('--out', default='/tmp/shapes_probe')
p.add_argument('--config_arg', default='',
               help="configs/shapes.py's argument, e.g. 'ae=/tmp/ae,arch=dit'")
p.add_argument('--variants', default='[]',
               help="sampler overrides evaluated on the final EMA model, e.g. "
               "\"[{'steps': 32}, {'name': 'euler_maruyama', 'steps': 64}]\"")
a = p.parse_args()
os.makedirs(a.out, exist_ok=True)
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')

def render(split, n):
  path = f'{a.out}/{split}_{n}.npz'
  if os.path.exists(path):
    d = np.load(path); return d['image'], d['label']
  s = shapes.ShapesSource(split=split)
  ex = [s[i] for i in range(n)]
  im = np.stack([e['image'] for e in ex]); lb = np.array([e['label'] for e in ex], np.int32)
  np.savez(path, image=im, label=lb); return im, lb

t0 = time.time()
X, Y = render('train', a.ntrain)
print('render', time.time() - t0, flush=True)

spec = os.path.join(ROOT, 'configs/shapes.py')
config = config_loader.load(spec + (':' + a.config_arg if a.config_arg else ''))
ov = eval(a.overrides)
for k, v in ov.items():
  node = config
  ks = k.split('.')
  for kk in ks[:-1]:
    node = node[kk]
  if isinstance(v, dict):
    v = mlc.ConfigDict(v)
  node[ks[-1]] = v
total_steps = ov.get('total_steps', a.steps)
config.total_steps = total_steps
b = builder.build(config)
state = builder.create_state(b, jax.random.key(1))
nparams = sum(x.size for x in jax.tree.leaves(state['params']))
print('params', nparams, flush=True)
step_fn = builder.make_train_step(b)
rng = jax.random.key(2)
B = config.data.batch_size
ev = in_loop.InLoopEvaluator(feature_net='shapes', reference={'image': render('test', 10000)[0], 'label': render('test', 10000)[1]}, num_samples=a.n, image_size=32, batch_size=250)
sfn = builder.make_sample_fn(b, 250)
def evaluate(params, key):
  def sample_fn(k, n):
    m = evaluations.draw(b, params, k, num=n, batch=250, sample_fn=sfn)
    return (m.samples, m.labels)
  return ev.run(sample_fn, key)

evals = [float(x) for x in a.evals.split(',') if x]
perm_rng = np.random.default_rng(0)
perm = perm_rng.permutation(len(X)); pos = 0
train_s = 0.0; step = 0; points = []; losses = []
while True:
  if pos + B > len(X):
    perm = perm_rng.permutation(len(X)); pos = 0
  idx = perm[pos:pos + B]; pos += B
  batch = {'image': X[idx], 'label': Y[idx]}
  t = time.time()
  state, m = step_fn(state, b.frozen.params, batch, rng)
  if step % 50 == 0 or step < 3:
    l = float(m['loss']); losses.append((step, l))
    print(f'step {step} loss {l:.4f} t {train_s:.1f}', flush=True)
  jax.block_until_ready(m['loss']) if step % 10 == 0 else None
  train_s += time.time() - t
  step += 1
  if step == 3: t_compile = train_s
  stop = step >= total_steps or (a.stop_step and step >= a.stop_step) or (
      not a.stop_step and train_s >= a.minutes * 60)
  if (evals and train_s >= evals[0] * 60) or stop:
    jax.block_until_ready(state)
    te = time.time()
    r = evaluate(builder.first_ema(state), jax.random.key(step))
    pt = dict(step=step, train_s=round(train_s, 1), eval_s=round(time.time() - te, 1),
              load=os.getloadavg()[0], **{k: v for k, v in r.items() if 'floor' not in k})
    points.append(pt)
    print('EVAL', json.dumps(pt), flush=True)
    if evals: evals.pop(0)
    if stop:
      break
ema = builder.first_ema(state)
import pickle
with open(f'{a.out}/ema_{a.name}.pkl', 'wb') as f:
  pickle.dump(jax.tree.map(np.asarray, ema), f)
for var in eval(a.variants):
  cv = config.copy_and_resolve_references()
  cv.sampler.update(var)
  bv = builder.build(cv)
  sv = builder.make_sample_fn(bv, 250)
  def sample_v(k, n, bv=bv, sv=sv):
    m = evaluations.draw(bv, ema, k, num=n, batch=250, sample_fn=sv)
    return (m.samples, m.labels)
  te = time.time()
  try:
    r = ev.run(sample_v, jax.random.key(step))
  except Exception as e:  # a variant that does not apply: report, go on
    print('VARIANT', var, 'failed:', str(e)[:300], flush=True)
    continue
  pt = dict(step=step, variant=var, eval_s=round(time.time() - te, 1),
            **{k: v for k, v in r.items() if 'floor' not in k})
  points.append(pt)
  print('VARIANT', json.dumps(pt), flush=True)
out = dict(name=a.name, overrides=a.overrides, params=int(nparams), points=points, losses=losses,
           s_per_step=(train_s - t_compile) / (step - 3))
json.dump(out, open(f'{a.out}/res_{a.name}.json', 'w'), indent=1)
# grid
from visgen import media as media_lib
cond = b.task.sample_cond({'per_class': 8})
x = builder.make_sample_fn(b, 32)(builder.first_ema(state), b.frozen.params, cond, jax.random.key(0), builder.guidance_scale(config))
m = b.task.to_media(x, cond)
from PIL import Image
g = media_lib.grid(m)
Image.fromarray(np.asarray(g)).resize((g.shape[1]*3, g.shape[0]*3), Image.NEAREST).save(f'{a.out}/grid_{a.name}.png')
print('done s/step', out['s_per_step'])
