"""A local web page that plays a world model (`python -m visgen.world
--serve`): standard-library HTTP, one page, one request per key press.

  GET  /            the page: arrow keys / WASD move, space = noop, r = reset
  GET  /frame.png   the latest frame (PNG, upscaled; ground truth | model
                    side by side when the rollout started in a test world)
  GET  /state       JSON {"frames", "actions", "step", "block_frames",
                    "resolution"}
  POST /act         body {"action": "up"} (or w/a/s/d, noop, 0..4): generates
                    the next block (the action repeated over its frames),
                    answers the new frame as PNG (header X-Frame: its index)
  POST /reset       body {} or {"world": K}: a fresh rollout

One rollout at a time (a lock serialises requests); the model keeps its
constant-size state between requests, so a session can run indefinitely.
"""

import http.server
import io
import json
import threading

import numpy as np
from PIL import Image

from visgen import validate

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>visgen world model</title>
<style>
body { font-family: sans-serif; margin: 2em; }
img { image-rendering: pixelated; height: 256px; border: 1px solid #888; }
</style></head>
<body>
<h3>visgen world model</h3>
<p>Arrow keys or WASD move the camera, space waits (noop), r resets.
Left: the real world, right: the model.</p>
<img id="frame" src="/frame.png" alt="frame">
<p id="status">ready</p>
<script>
const KEYS = {ArrowUp: 'up', w: 'up', ArrowDown: 'down', s: 'down',
              ArrowLeft: 'left', a: 'left', ArrowRight: 'right',
              d: 'right', ' ': 'noop'};
let busy = false;
const img = document.getElementById('frame');
const status = document.getElementById('status');
document.addEventListener('keydown', async (e) => {
  if (busy) return;
  if (e.key === 'r') {
    busy = true;
    await fetch('/reset', {method: 'POST', body: '{}'});
    img.src = '/frame.png?' + Date.now();
    status.textContent = 'reset';
    busy = false;
    return;
  }
  const action = KEYS[e.key];
  if (!action) return;
  e.preventDefault();
  busy = true;
  const r = await fetch('/act', {method: 'POST',
      headers: {'Content-Type': 'application/json'},
      body: JSON.stringify({action: action})});
  if (r.ok) {
    img.src = URL.createObjectURL(await r.blob());
    status.textContent = 'frame ' + r.headers.get('X-Frame') + ': ' + action;
  } else {
    status.textContent = await r.text();
  }
  busy = false;
});
</script></body></html>
"""


def png_bytes(frame_uint8: np.ndarray, *, upscale: int = 8) -> bytes:
  """A (H, W, C) uint8 frame as PNG bytes (nearest-neighbour upscaled)."""
  img = Image.fromarray(np.asarray(frame_uint8, np.uint8))
  if upscale > 1:
    img = img.resize((img.width * upscale, img.height * upscale),
                     Image.Resampling.NEAREST)
  buf = io.BytesIO()
  img.save(buf, format='PNG')
  return buf.getvalue()


class WorldApp:
  """The server's state: one rollout of a `visgen.world.WorldModel`."""

  def __init__(self, wm, *, world: int = 0, seed: int = 0, guidance=None,
               steps=None, upscale: int | None = None):
    self.wm, self.seed = wm, seed
    self.guidance, self.steps = guidance, steps
    self.upscale = upscale or max(1, 128 // wm.resolution)
    self.lock = threading.Lock()
    self.reset(world)

  def reset(self, world: int = 0) -> None:
    from visgen.data import preprocess  # pylint: disable=g-import-not-at-top

    w, camera, context, ctx_actions = self.wm.test_start(int(world))
    with self.lock:
      self.world_index, self.world, self.camera = int(world), w, camera
      self.session = self.wm.session(context, ctx_actions, seed=self.seed,
                                     guidance=self.guidance,
                                     steps=self.steps)
      self.frame = preprocess.to_uint8(np.asarray(self.session.last[0]))
      self.truth = w.view(camera)
      self.actions: list[int] = []

  def act(self, action) -> int:
    """Generates the next block under `action`; returns the frame count."""
    from visgen import world as world_cli  # pylint: disable=g-import-not-at-top
    from visgen.data import preprocess  # pylint: disable=g-import-not-at-top

    a = world_cli.parse_action(action)
    f = self.wm.task.block_frames
    with self.lock:
      x = self.session.act([a] * f)
      self.frame = preprocess.to_uint8(x[0, -1])
      for _ in range(f):
        self.camera = self.world.step(self.camera, a)
      self.truth = self.world.view(self.camera)
      self.actions += [a] * f
      return self.session.frames_done

  def png(self) -> bytes:
    from visgen import world as world_cli  # pylint: disable=g-import-not-at-top

    with self.lock:
      panel = world_cli.side_by_side(self.truth, self.frame)
    return png_bytes(panel, upscale=self.upscale)

  def state(self) -> dict:
    with self.lock:
      return {'frames': int(self.session.frames_done),
              'actions': list(self.actions), 'world': self.world_index,
              'step': int(self.wm.step),
              'block_frames': int(self.wm.task.block_frames),
              'resolution': int(self.wm.resolution)}


class Handler(http.server.BaseHTTPRequestHandler):
  """Routes of the module docstring; `self.server.app` is the WorldApp."""

  server_version = 'visgen-world/1'

  def _send(self, code: int, body: bytes, ctype: str, headers=None):
    self.send_response(code)
    self.send_header('Content-Type', ctype)
    self.send_header('Content-Length', str(len(body)))
    self.send_header('Cache-Control', 'no-store')
    for k, v in (headers or {}).items():
      self.send_header(k, v)
    self.end_headers()
    self.wfile.write(body)

  def _json_body(self) -> dict:
    n = int(self.headers.get('Content-Length') or 0)
    raw = self.rfile.read(n) if n else b''
    if not raw.strip():
      return {}
    try:
      body = json.loads(raw)
    except ValueError as e:
      raise validate.UserError(f'the request body is not JSON: {e}') from e
    if not isinstance(body, dict):
      raise validate.UserError('the request body must be a JSON object.')
    return body

  def do_GET(self):  # pylint: disable=invalid-name
    app = self.server.app
    route = self.path.split('?')[0]
    if route in ('/', '/index.html'):
      self._send(200, PAGE.encode(), 'text/html; charset=utf-8')
    elif route == '/frame.png':
      self._send(200, app.png(), 'image/png')
    elif route == '/state':
      self._send(200, json.dumps(app.state()).encode(), 'application/json')
    else:
      self._send(404, b'not found\n', 'text/plain')

  def do_POST(self):  # pylint: disable=invalid-name
    app = self.server.app
    route = self.path.split('?')[0]
    try:
      body = self._json_body()
      if route == '/act':
        if 'action' not in body:
          raise validate.UserError('POST /act needs {"action": "up"} (w/a/s/'
                                   'd, up/down/left/right, noop).')
        n = app.act(body['action'])
        self._send(200, app.png(), 'image/png', {'X-Frame': str(n)})
      elif route == '/reset':
        app.reset(int(body.get('world', app.world_index)))
        self._send(200, json.dumps(app.state()).encode(),
                   'application/json')
      else:
        self._send(404, b'not found\n', 'text/plain')
    except (validate.UserError, ValueError) as e:
      self._send(400, f'error: {e}\n'.encode(), 'text/plain')

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    del format, args  # Quiet: one line per key press is noise.


def make_server(app: WorldApp, *, host: str = '127.0.0.1',
                port: int = 8000) -> http.server.ThreadingHTTPServer:
  """An HTTP server for `app` (port 0: a free port); call serve_forever."""
  server = http.server.ThreadingHTTPServer((host, port), Handler)
  server.app = app
  return server
