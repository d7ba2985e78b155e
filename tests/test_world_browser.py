"""The world-model page (`python -m visgen.world --serve`) end to end in a
headless browser: Chromium loads the page from the stdlib server, real key
presses (d, ArrowRight, w, r) drive the model, and the test checks the
pixels the page displays, its status line and the server's /state.

Optional: it needs Chromium, its driver and selenium, which the CI's venv
(requirements.txt) does not have; without them the module skips with the
reason below, and tests/test_world.py still covers the HTTP level. Enable:

  apt-get install chromium chromium-driver   # Debian: /usr/bin/chromium
  pip install -r requirements-browser.txt    # selenium, pinned

The model is tests/test_world.py's tiny runlocal workdir (its fixtures).
"""

import base64
import io
import json
import shutil
import tempfile
import threading
import time
import urllib.request

import numpy as np
from PIL import Image
import pytest

from visgen import world_server

ENABLE = ('enable with `apt-get install chromium chromium-driver` and '
          '`pip install -r requirements-browser.txt`')
webdriver = pytest.importorskip(
    'selenium.webdriver',
    reason=f'headless-browser test: selenium is not installed ({ENABLE})')
CHROMIUM = next(filter(None, map(shutil.which, (
    'chromium', 'chromium-browser', 'google-chrome'))), None)
CHROMEDRIVER = shutil.which('chromedriver')
if not (CHROMIUM and CHROMEDRIVER):
  pytest.skip('headless-browser test: no chromium / chromedriver on PATH '
              f'({ENABLE})', allow_module_level=True)

# After the skips: it imports JAX. tests/ is on sys.path under pytest.
import test_world  # noqa: E402

# The module-scoped tiny world model of tests/test_world.py (3 steps of
# configs/world_shapes.py:runlocal), trained once for this module.
workdir = test_world.workdir
wm = test_world.wm

TIMEOUT = 60.0  # The first key press compiles the block solver.

# The displayed frame as the browser decoded it: RGBA pixels via a canvas,
# base64 (blob: and same-origin URLs do not taint the canvas).
PIXELS_JS = """
const img = document.getElementById('frame');
const c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight;
const ctx = c.getContext('2d');
ctx.drawImage(img, 0, 0);
const d = ctx.getImageData(0, 0, c.width, c.height).data;
let s = '';
for (let i = 0; i < d.length; i += 8192) {
  s += String.fromCharCode.apply(null, d.subarray(i, i + 8192));
}
return [c.width, c.height, btoa(s)];
"""

LOADED_JS = """
const img = document.getElementById('frame');
return img.complete && img.naturalWidth > 0 ? img.src : null;
"""


def _wait(what, fn, timeout=TIMEOUT):
  """Polls fn until truthy; `what` (a string or a callable giving one,
  evaluated at the timeout) names it in the failure."""
  end = time.monotonic() + timeout
  while True:
    value = fn()
    if value:
      return value
    if time.monotonic() > end:
      what = what() if callable(what) else what
      raise AssertionError(f'timed out after {timeout:.0f} s waiting for '
                           f'{what}')
    time.sleep(0.05)


@pytest.fixture(scope='module')
def server(wm):  # pylint: disable=redefined-outer-name
  app = world_server.WorldApp(wm, world=0)
  srv = world_server.make_server(app, host='127.0.0.1', port=0)
  thread = threading.Thread(target=srv.serve_forever, daemon=True)
  thread.start()
  yield f'http://127.0.0.1:{srv.server_address[1]}'
  srv.shutdown()
  srv.server_close()


@pytest.fixture(scope='module')
def browser():
  profile = tempfile.mkdtemp(prefix='visgen-chromium-')
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  # Without the background-networking flags Chromium can hang on a closed
  # network; a fresh profile keeps runs independent.
  for flag in ('--headless', '--no-sandbox', '--disable-gpu',
               '--disable-quic', '--no-first-run',
               '--disable-background-networking',
               '--disable-component-update', '--disable-sync',
               '--disable-dev-shm-usage', '--window-size=800,600',
               f'--user-data-dir={profile}'):
    options.add_argument(flag)
  options.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
  driver = webdriver.Chrome(
      options=options, service=webdriver.ChromeService(CHROMEDRIVER))
  driver.set_page_load_timeout(TIMEOUT)
  driver.set_script_timeout(TIMEOUT)
  try:
    yield driver
  finally:
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _get(url):
  with urllib.request.urlopen(url, timeout=TIMEOUT) as r:
    return r.read()


def _server_pixels(base):
  """The server's current frame (GET /frame.png) as RGBA pixels."""
  png = _get(base + '/frame.png')
  return np.asarray(Image.open(io.BytesIO(png)).convert('RGBA'))


def _page_pixels(driver):
  w, h, data = driver.execute_script(PIXELS_JS)
  return np.frombuffer(base64.b64decode(data), np.uint8).reshape(h, w, 4)


def _status(driver):
  return driver.execute_script(
      "return document.getElementById('status').textContent")


def _press(driver, key):
  """A real key press on the focused page (the document's keydown)."""
  webdriver.ActionChains(driver).send_keys(key).perform()


def test_keys_drive_the_model_in_a_headless_browser(server, browser):
  driver = browser
  base = server
  driver.get(base + '/')
  assert driver.title == 'visgen world model'
  src = _wait('the first frame to load', lambda: driver.execute_script(
      LOADED_JS))
  state = json.loads(_get(base + '/state'))
  assert state['actions'] == []
  bf, f0 = state['block_frames'], state['frames']
  first = _page_pixels(driver)
  # truth | model at 8x8, upscaled 16x: exactly what the server renders.
  assert first.shape == (8 * 16, (2 * 8 + 1) * 16, 4)
  np.testing.assert_array_equal(first, _server_pixels(base))
  assert _status(driver) == 'ready'

  keys = webdriver.Keys
  presses = [('d', 'right', 4), (keys.ARROW_RIGHT, 'right', 4),
             ('w', 'up', 1)]
  shown, actions = first, []
  for i, (key, name, index) in enumerate(presses, start=2):
    _press(driver, key)
    want = f'frame {f0 + (i - 1) * bf}: {name}'
    _wait(lambda w=want: f'status {w!r} (it is {_status(driver)!r})',
          lambda w=want: _status(driver) == w)
    new_src = _wait('the new frame to load', lambda s=src: (
        (v := driver.execute_script(LOADED_JS)) and v != s and v))
    assert new_src.startswith('blob:'), new_src
    src = new_src
    now = _page_pixels(driver)
    assert now.shape == first.shape
    # The page changed, and it shows the server's current frame exactly.
    assert np.any(now != shown), f'frame unchanged after {name}'
    np.testing.assert_array_equal(now, _server_pixels(base))
    shown = now
    actions += [index] * bf
    state = json.loads(_get(base + '/state'))
    assert state['actions'] == actions, (name, state)
    assert state['frames'] == f0 + (i - 1) * bf
  assert actions == [4] * bf + [4] * bf + [1] * bf

  # r: a fresh rollout of the same world and seed shows the first frame.
  _press(driver, 'r')
  _wait('status reset', lambda: _status(driver) == 'reset')
  _wait('the reset frame to load', lambda s=src: (
      (v := driver.execute_script(LOADED_JS)) and v != s and v))
  state = json.loads(_get(base + '/state'))
  assert state['frames'] == f0 and state['actions'] == []
  np.testing.assert_array_equal(_page_pixels(driver), first)

  # No JavaScript errors (the favicon 404 is Chromium's own request).
  errors = [e for e in driver.get_log('browser')
            if e['level'] == 'SEVERE' and 'favicon' not in e['message']]
  assert not errors, errors
