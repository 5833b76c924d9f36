"""The web app (bilayer_jax/app.py): its request function directly, and the page in a real browser.

The browser tests start `python -m bilayer_jax.app` on a free local port with the small imported params and
drive headless Chromium through Selenium with Debian's `chromium` and `chromium-driver` (the system
chromedriver is named explicitly, so Selenium Manager never downloads one). Without those two packages the
browser tests skip, except under CI (CI=true), where .ci/run installs them and their absence fails.
"""

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.request

import gradio as gr
import numpy as np
from PIL import Image
import pytest

from bilayer_jax import app
from bilayer_jax import drive
from bilayer_jax.data import samples
from bilayer_jax.inference import preprocess
from bilayer_jax.inference import video

CLIP_FRAMES = 6
BROWSER_GROUP = pytest.mark.xdist_group('app_browser')  # one server and one browser for the page tests


@pytest.fixture(scope='module')
def clip(tmp_path_factory) -> str:
  """The first frames of the in-package talking-face clip, as a short mp4."""
  path = tmp_path_factory.mktemp('clip') / 'carphone6.mp4'
  video.write_mp4(path, video.read_video(samples.carphone_path(), CLIP_FRAMES), fps=25)
  return str(path)


@pytest.fixture(scope='module')
def gray_photo(tmp_path_factory) -> str:
  """A flat gray picture: no face to find."""
  path = tmp_path_factory.mktemp('gray') / 'gray.png'
  Image.new('RGB', (320, 320), (128, 128, 128)).save(path)
  return str(path)


def test_colours_of_the_picker_parse():
  assert app.parse_colour('#FF8000') == (255, 128, 0)
  assert app.parse_colour('#abc') == (170, 187, 204)
  assert app.parse_colour('rgba(1, 2.4, 3, 0.5)') == (1, 2, 3)
  for bad in ('red', 'rgb(300, 0, 0)', '#12345', ''):
    with pytest.raises(preprocess.OptionError, match='background colour'):
      app.parse_colour(bad)


def test_missing_inputs_and_user_errors_are_page_messages(monkeypatch, tmp_path):
  animate = app.Animate(types.SimpleNamespace(has_enhancer=False), tmp_path)
  with pytest.raises(gr.Error, match='Upload a photo'):
    animate(None, 'clip.mp4', False, '#ffffff', False, progress=lambda *a, **k: None)
  with pytest.raises(gr.Error, match='Upload a driving video'):
    animate('photo.jpg', None, False, '#ffffff', False, progress=lambda *a, **k: None)
  upload = str(tmp_path / 'uploads' / 'f00d' / 'gray.png')

  def no_face(*args, **kwargs):
    raise preprocess.NoFaceError(f'{upload}: no face found <in 320x320>')
  monkeypatch.setattr(drive, 'drive', no_face)
  with pytest.raises(gr.Error) as raised:
    animate(upload, 'clip.mp4', False, '#ffffff', False, progress=lambda *a, **k: None)
  # The upload's temporary folder is cut off and the text escaped for the page's HTML.
  assert raised.value.message == 'gray.png: no face found &lt;in 320x320&gt;'

  def bug(*args, **kwargs):
    raise RuntimeError('a bug')
  monkeypatch.setattr(drive, 'drive', bug)
  with pytest.raises(RuntimeError, match='a bug'):  # not a user's message: Gradio logs it, the page says Error
    animate(upload, 'clip.mp4', False, '#ffffff', False, progress=lambda *a, **k: None)


def test_simultaneous_requests_keep_their_own_options_and_results(params_dir, photo_file, clip, tmp_path):
  """Two requests at once on one loaded model: each gets its own file, layout and progress reports."""
  animate = app.Animate(drive.load_animator(params_dir, landmarks='dlib'), tmp_path)
  results, reports = {}, {True: [], False: []}

  def request(side_by_side):
    record = lambda fraction, desc=None: reports[side_by_side].append((fraction, desc))
    results[side_by_side] = animate(photo_file, clip, False, '#00ff00' if side_by_side else '#0000ff',
                                    side_by_side, progress=record)
  threads = [threading.Thread(target=request, args=(s,)) for s in (True, False)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert set(results) == {True, False} and results[True][0] != results[False][0]
  for side_by_side, (out, summary) in results.items():
    frames = list(video.read_video(out))
    assert len(frames) == CLIP_FRAMES and f'{CLIP_FRAMES} frames' in summary and 'enhancer off' in summary
    assert frames[0].shape == (256, 256 * (3 if side_by_side else 1), 3)
    assert reports[side_by_side][0] == (0.0, 'finding the face and building the avatar')
    assert reports[side_by_side][-1] == (1.0, f'rendering frame {CLIP_FRAMES} of {CLIP_FRAMES}')


def _installed_or_skip(*programs):
  missing = [p for p in programs if not shutil.which(p)]
  if missing:
    message = f'{missing} not installed (.ci/install_browser, part of the README test command)'
    if os.environ.get('CI'):
      pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def app_url(params_dir, tmp_path_factory):
  """The app started as a user starts it, on a free port; its output goes to a log file in the tmp dir."""
  _installed_or_skip('chromium', 'chromedriver')
  folder = tmp_path_factory.mktemp('app')
  port = _free_port()
  env = dict(os.environ, GRADIO_TEMP_DIR=str(folder / 'gradio'))
  with open(folder / 'app.log', 'w') as log:
    server = subprocess.Popen([sys.executable, '-m', 'bilayer_jax.app', f'--params={params_dir}', f'--port={port}',
                               '--landmarks=dlib'], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
  url = f'http://127.0.0.1:{port}/'
  try:
    deadline = time.monotonic() + 180
    while True:
      assert server.poll() is None, f'the app exited: {(folder / "app.log").read_text()[-3000:]}'
      try:
        urllib.request.urlopen(url, timeout=5).close()
        break
      except OSError:
        assert time.monotonic() < deadline, f'the app did not answer: {(folder / "app.log").read_text()[-3000:]}'
        time.sleep(1)
    yield url
  finally:
    server.terminate()
    try:
      server.wait(timeout=30)
    except subprocess.TimeoutExpired:
      server.kill()


@pytest.fixture(scope='module')
def browser(app_url, tmp_path_factory):
  """Headless Chromium driven by the system chromedriver (nothing is downloaded)."""
  os.environ['SE_OFFLINE'] = 'true'
  from selenium import webdriver  # pylint: disable=g-import-not-at-top
  options = webdriver.ChromeOptions()
  options.binary_location = shutil.which('chromium')
  for arg in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu', '--window-size=1280,960',
              '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync',
              f'--user-data-dir={tmp_path_factory.mktemp("chromium")}'):
    options.add_argument(arg)
  service = webdriver.ChromeService(executable_path=shutil.which('chromedriver'))
  chrome = webdriver.Chrome(options=options, service=service)
  yield chrome
  chrome.quit()


def _submit(browser, url, photo, driver_video, side_by_side=False):
  """Opens the page, uploads the photo and the driving video, ticks the options, presses Animate."""
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=g-import-not-at-top
  browser.get(url)
  WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, '#animate'))
  browser.find_element(By.CSS_SELECTOR, '#photo input[type=file]').send_keys(photo)
  browser.find_element(By.CSS_SELECTOR, '#driver input[type=file]').send_keys(driver_video)
  # Wait for both previews: pressing Animate before an upload finishes would send an empty input.
  WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, '#photo img')
                                   and b.find_elements(By.CSS_SELECTOR, '#driver video[src]'))
  if side_by_side:
    browser.find_element(By.CSS_SELECTOR, '#side_by_side input[type=checkbox]').click()
  browser.find_element(By.CSS_SELECTOR, '#animate').click()


@BROWSER_GROUP
def test_the_page_animates_an_uploaded_photo(browser, app_url, photo_file, clip, tmp_path):
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=g-import-not-at-top
  _submit(browser, app_url, photo_file, clip, side_by_side=True)
  result = WebDriverWait(browser, 300).until(
      lambda b: next(iter(b.find_elements(By.CSS_SELECTOR, '#result video[src]')), None))
  WebDriverWait(browser, 30).until(lambda b: 'frames' in b.find_element(By.CSS_SELECTOR, '#summary').text)
  browser.execute_script('window.scrollTo(0, 0)')
  assert browser.save_screenshot(str(tmp_path / 'web_app.png'))
  # The mp4 the page plays (and downloads) is the whole animation: every driver frame, source | driver | result.
  with urllib.request.urlopen(result.get_attribute('src'), timeout=30) as response:
    (tmp_path / 'result.mp4').write_bytes(response.read())
  frames = list(video.read_video(tmp_path / 'result.mp4'))
  assert len(frames) == CLIP_FRAMES and frames[0].shape == (256, 3 * 256, 3)
  assert np.asarray(Image.open(tmp_path / 'web_app.png')).std() > 10  # a drawn page, not a blank one
  assert f'{CLIP_FRAMES} frames' in browser.find_element(By.CSS_SELECTOR, '#summary').text


@BROWSER_GROUP
def test_the_page_says_when_the_photo_has_no_face(browser, app_url, gray_photo, clip, tmp_path):
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=g-import-not-at-top
  _submit(browser, app_url, gray_photo, clip)
  body = lambda b: b.find_element(By.TAG_NAME, 'body').text
  WebDriverWait(browser, 300).until(lambda b: 'no face found' in body(b))
  assert browser.save_screenshot(str(tmp_path / 'no_face.png'))
  text = body(browser)
  assert 'gray.png: no face found' in text and 'Traceback' not in text
  assert not browser.find_elements(By.CSS_SELECTOR, '#result video[src]')
