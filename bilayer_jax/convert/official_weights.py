"""Downloads the officially released bi-layer run directories, verified, ready for the importer.

The authors released their trained networks in a Google Drive folder (linked from the original repository's
README) that holds `runs/` and `pretrained_weights/`. Inference needs, of the base run
`runs/vc2-hq_adrianb_paper_main` (epoch 2225), `args.txt` and the checkpoints of the four base networks, and of
the enhancer run `runs/vc2-hq_adrianb_paper_enhancer` (epoch 1225), `args.txt` and the texture enhancer's
checkpoint: exactly what `convert.original.import_run` reads (the discriminators, needed by neither inference
nor the importer, are not fetched).

`download` fetches these files from a base URL that urllib opens (https://, http://, file://) and that is laid
out like the Drive folder (`<url>/runs/<run>/args.txt`, `<url>/runs/<run>/checkpoints/<epoch>_<net>.pth`), or
from the Drive folder itself through gdown (which Colab ships). Every file is streamed in chunks to a
temporary name with a progress bar and renamed only once it is complete and verified: a checkpoint must load
as a PyTorch state dict (`torch.load` with weights_only=True), an args.txt must parse. The SHA-256 of each
file goes into `sha256.json` next to them; a rerun skips the files already there (after checking them
against that manifest) and fetches only the rest. The networks' keys and shapes are checked when the runs
are imported (`bilayer_jax.import_original`). Failures are `DownloadError`s of one line.
"""

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Dict, List, Mapping

import tqdm.auto

from bilayer_jax import errors
from bilayer_jax.convert import original
from bilayer_jax.models.config import BASE_NETWORKS

DRIVE_FOLDER_URL = 'https://drive.google.com/drive/folders/11SwIYnk3KY61d8qa17Nlb0BN9j57B3L6'
BASE_RUN, BASE_EPOCH = 'vc2-hq_adrianb_paper_main', '2225'
ENHANCER_RUN, ENHANCER_EPOCH = 'vc2-hq_adrianb_paper_enhancer', '1225'
MANIFEST = 'sha256.json'
_CHUNK_BYTES = 1 << 20
_TIMEOUT_S = 60  # per blocking socket operation, not per file
_DRIVE_FOLDER = re.compile(r'^https?://drive\.google\.com/drive/(?:u/\d+/)?folders/[\w-]+')

# Writes one relative path (e.g. 'runs/<run>/args.txt') into a local file; returns where it came from.
Fetcher = Callable[[str, pathlib.Path, bool], str]


class DownloadError(errors.UserError, RuntimeError):
  """Official weights that cannot be downloaded, or a downloaded file that is not what the importer reads."""


@dataclasses.dataclass(frozen=True)
class Runs:
  base: str  # the base run directory
  enhancer: str  # the enhancer run directory; '' when it was not asked for


def wanted_files(epoch: str = BASE_EPOCH, enh_epoch: str = ENHANCER_EPOCH) -> List[str]:
  """Paths, relative to the Drive folder, of the files the importer reads (no enhancer without `enh_epoch`)."""
  files = [f'runs/{BASE_RUN}/args.txt'] + [f'runs/{BASE_RUN}/checkpoints/{epoch}_{n}.pth' for n in BASE_NETWORKS]
  if enh_epoch:
    files += [f'runs/{ENHANCER_RUN}/args.txt', f'runs/{ENHANCER_RUN}/checkpoints/{enh_epoch}_texture_enhancer.pth']
  return files


def download(url: str = DRIVE_FOLDER_URL, dest: os.PathLike = 'runs/official', epoch: str = BASE_EPOCH,
             enh_epoch: str = ENHANCER_EPOCH, progress: bool = True) -> Runs:
  """Fetches the official run directories into `dest` (`dest/runs/<run>/...`); returns their paths.

  Args:
    url: the Google Drive folder's URL, or a base URL laid out like that folder (https://, file://, ...).
    dest: the local folder; files already there and matching the manifest are not fetched again.
    epoch: the base run's checkpoint epoch.
    enh_epoch: the enhancer run's checkpoint epoch ('' to leave the enhancer out).
    progress: show a progress bar per file.

  Raises:
    DownloadError: an unreachable URL, a file missing on the server, a file that is not a checkpoint (or an
      args.txt), or a file here whose checksum differs from the one recorded when it was downloaded.
  """
  dest = pathlib.Path(dest)
  manifest = _read_manifest(dest)
  wanted = wanted_files(epoch, enh_epoch)
  missing = [rel for rel in wanted if not _is_complete(dest, rel, manifest)]
  if missing:  # only then: listing the Drive folder takes requests of its own
    fetch = _drive_fetcher(url) if _DRIVE_FOLDER.match(url) else _url_fetcher(url)
    for rel in missing:
      original.atomic_write(dest / rel, functools.partial(_fetch_verified, fetch, rel, dest, manifest, progress))
  print(f'official weights: {len(missing)} file(s) downloaded, {len(wanted) - len(missing)} already here and '
        f'verified, in {dest}')
  return Runs(str(dest / 'runs' / BASE_RUN), str(dest / 'runs' / ENHANCER_RUN) if enh_epoch else '')


# --- verification and the manifest ------------------------------------------------------------------
def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    while chunk := f.read(_CHUNK_BYTES):
      digest.update(chunk)
  return digest.hexdigest()


def _read_manifest(dest: pathlib.Path) -> Dict[str, Dict[str, str]]:
  path = dest / MANIFEST
  if not path.is_file():
    return {}
  try:
    return json.loads(path.read_text())
  except ValueError as e:
    raise DownloadError(f'{path}: not a readable manifest ({e}); delete it to verify the files again') from None


def _write_manifest(dest: pathlib.Path, manifest: Mapping[str, Mapping[str, str]]) -> None:
  text = json.dumps(manifest, indent=1, sort_keys=True)
  original.atomic_write(dest / MANIFEST, lambda tmp: pathlib.Path(tmp).write_text(text))


def _is_complete(dest: pathlib.Path, rel: str, manifest: Dict[str, Dict[str, str]]) -> bool:
  """Whether `rel` is here and sound. Files only appear once verified, so one the manifest lacks was put
  there by hand: it is verified now and recorded."""
  path = dest / rel
  if not path.is_file():
    return False
  if rel not in manifest:
    _verify(path, rel, str(path))
    manifest[rel] = {'sha256': _sha256(path), 'source': str(path)}
    _write_manifest(dest, manifest)
  elif _sha256(path) != manifest[rel]['sha256']:
    raise DownloadError(f'{path}: its SHA-256 differs from the one recorded when it was downloaded '
                        f'({dest / MANIFEST}): the file changed or is corrupt; delete it to download it again')
  return True


def _verify(path: os.PathLike, rel: str, source: str) -> None:
  """Checks that the file at `path`, fetched for `rel`, is a PyTorch state dict (names -> tensors) or an
  args.txt that parses; `source` (a URL) names it in errors."""
  if not rel.endswith('.pth'):
    try:
      original.read_args(path)
    except (original.RunDirError, UnicodeDecodeError) as e:
      raise DownloadError(f'{source} is not an args.txt of the original code ({_first_line(e)})') from None
    return
  import torch  # pylint: disable=g-import-not-at-top
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  # torch raises many types for files it cannot read
    raise DownloadError(f'{source} is not a PyTorch checkpoint ({type(e).__name__}: {_first_line(e)})') from None
  if not (isinstance(state, Mapping) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
    raise DownloadError(f'{source}: expected a state dict (names -> tensors), found {type(state).__name__}')


def _first_line(error: BaseException) -> str:
  return next((line.strip() for line in str(error).splitlines() if line.strip()), '')


def _fetch_verified(fetch: Fetcher, rel: str, dest: pathlib.Path, manifest: Dict[str, Dict[str, str]],
                    progress: bool, tmp: str) -> None:
  """Fetches `rel` into the temporary file `tmp`, verifies it and records it (the caller renames it)."""
  source = fetch(rel, pathlib.Path(tmp), progress)
  _verify(tmp, rel, source)
  manifest[rel] = {'sha256': _sha256(pathlib.Path(tmp)), 'source': source}
  _write_manifest(dest, manifest)


# --- fetching -----------------------------------------------------------------------------------------
def _url_fetcher(base: str) -> Fetcher:
  """Fetches from `<base>/<relative path>` with urllib."""
  base = base.rstrip('/')

  def fetch(rel: str, out: pathlib.Path, progress: bool) -> str:
    url = f'{base}/{urllib.parse.quote(rel)}'
    try:
      response = urllib.request.urlopen(url, timeout=_TIMEOUT_S)  # pylint: disable=consider-using-with
    except urllib.error.HTTPError as e:
      if e.code in (404, 410):
        raise DownloadError(f'{rel} is missing on the server: {url} answered HTTP {e.code}') from None
      raise DownloadError(f'{url}: the server answered HTTP {e.code} {e.reason}') from None
    except urllib.error.URLError as e:
      if isinstance(e.reason, FileNotFoundError):
        raise DownloadError(f'{rel} is missing on the server: no file at {url}') from None
      raise DownloadError(f'cannot reach {url}: {e.reason} (does the runtime have internet?)') from None
    except ValueError as e:  # urllib's answer to what is not a URL
      raise errors.InvalidArgumentError(f'{base}: not a URL ({e})') from None
    with response:
      _stream(response, out, url, pathlib.PurePosixPath(rel).name, progress)
    return url

  return fetch


def _stream(response, out: pathlib.Path, url: str, name: str, progress: bool) -> None:
  """Copies the response into `out` chunk by chunk; a response shorter than announced is an error."""
  length = response.headers.get('Content-Length')
  total = int(length) if length and length.isdigit() else None
  received = 0
  try:
    with open(out, 'wb') as f, tqdm.auto.tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024, desc=name,
                                              disable=not progress) as bar:
      while chunk := response.read(_CHUNK_BYTES):
        f.write(chunk)
        received += len(chunk)
        bar.update(len(chunk))
  except OSError as e:  # connection reset, timeout
    raise DownloadError(f'{url}: the download broke off after {received} bytes ({e}); run again to retry') from None
  if total is not None and received != total:
    raise DownloadError(f'{url}: the download broke off after {received} of {total} bytes; run again to retry')


def _drive_fetcher(folder_url: str) -> Fetcher:
  """Fetches from the Google Drive folder itself through gdown: the folder is listed once, then each file
  is downloaded by its id (gdown shows its own progress bar)."""
  try:
    import gdown  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise DownloadError('a Google Drive folder URL needs gdown (Colab has it): `pip install gdown`, or give a URL '
                        'laid out like the folder') from None
  try:  # skip_download (gdown >= 5) lists the files without fetching the whole folder
    listing = gdown.download_folder(url=folder_url, skip_download=True, quiet=True, remaining_ok=True)
  except TypeError:
    raise DownloadError(f'gdown {gdown.__version__} cannot list a folder without downloading it: '
                        '`pip install -U gdown`') from None
  except Exception as e:  # pylint: disable=broad-except  # requests' and gdown's own errors
    raise DownloadError(f'cannot list the Google Drive folder {folder_url}: {_first_line(e)}') from None
  if not listing:
    raise DownloadError(f'cannot list the Google Drive folder {folder_url} (does the runtime have internet, is the '
                        'folder still shared?)')
  ids = {pathlib.PurePath(entry.path).as_posix(): entry.id for entry in listing}

  def fetch(rel: str, out: pathlib.Path, progress: bool) -> str:
    file_id = next((i for path, i in ids.items() if path == rel or path.endswith('/' + rel)), None)
    if file_id is None:
      raise DownloadError(f'{rel} is missing in the Google Drive folder {folder_url}')
    try:
      done = gdown.download(id=file_id, output=str(out), quiet=not progress)
    except Exception as e:  # pylint: disable=broad-except  # e.g. Drive's daily quota for a popular file
      raise DownloadError(f'gdown could not download {rel} from {folder_url}: {_first_line(e)}') from None
    if done is None:
      raise DownloadError(f'gdown could not download {rel} from {folder_url}')
    return f'{folder_url} ({rel}, id {file_id})'

  return fetch
