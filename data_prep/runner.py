"""Runs the per-video processing on all local cores, resumably.

Every job ends in a record (``.npz``) and a status (``.json``) in the work
folder, both written under temporary names and renamed when complete. A job
with a status is finished (kept or skipped for a reason), so a re-run only
processes the rest; jobs that hit an unexpected error are retried. A worker
process that dies (e.g. a decoder crash) is replaced and its jobs retried;
a job in flight during two such deaths is skipped and reported. The report
summary counts videos kept and skipped (by reason) overall and per split.
"""

from collections.abc import Sequence
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import pathlib
import re
import time
import traceback

import tqdm

from data_prep import process
from data_prep import sources

_MAX_CRASHES = 2
_processor: process.Processor | None = None  # one per worker process


def default_num_workers() -> int:
  return len(os.sched_getaffinity(0))


@dataclasses.dataclass(frozen=True)
class WorkDir:
  """Where the records and statuses of one Options fingerprint live."""
  root: pathlib.Path
  options: process.Options

  @property
  def path(self) -> pathlib.Path:
    return self.root / self.options.fingerprint()

  def files(self, job: sources.Job) -> tuple[pathlib.Path, pathlib.Path]:
    """(record, status) paths of a job."""
    fp = job.fingerprint()
    safe = re.sub(r'[^A-Za-z0-9._-]+', '_', job.key)[:96]
    base = self.path / 'records' / fp[:2] / f'{safe}-{fp}'
    return base.with_suffix('.npz'), base.with_suffix('.json')

  def status(self, job: sources.Job) -> dict | None:
    record, status = self.files(job)
    try:
      st = json.loads(status.read_text())
    except (OSError, ValueError):
      return None
    if st['status'] == 'ok' and not record.is_file():
      return None
    return st


def first_missing(path: pathlib.Path) -> pathlib.Path | None:
  """The outermost folder of ``path`` that does not exist yet; None if none."""
  if path.exists():
    return None
  while not path.parent.exists():
    path = path.parent
  return path


def _write_json(path: pathlib.Path, obj) -> None:
  tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
  tmp.write_text(json.dumps(obj))
  os.replace(tmp, path)


def run_job(processor: process.Processor, work: WorkDir,
            job: sources.Job) -> dict:
  """Processes one job and stores its record and status; never raises."""
  record_path, status_path = work.files(job)
  record_path.parent.mkdir(parents=True, exist_ok=True)
  try:
    record, status = processor.process(job)
    if record is not None:
      record.save(record_path)
  except Exception as e:  # pylint: disable=broad-except
    # Unexpected: report it, keep going, retry on the next run.
    status = {'key': job.key, 'split': job.split, 'status': 'error',
              'reason_code': 'error', 'reason': f'{type(e).__name__}: {e}',
              'traceback': traceback.format_exc(limit=4),
              'sources': [s.path for s in job.sequences]}
  _write_json(status_path, status)
  return status


def _init_worker(options: process.Options) -> None:
  import cv2  # pylint: disable=g-import-not-at-top
  cv2.setNumThreads(1)  # the pool already has one process per core
  global _processor
  _processor = process.Processor(options)


def _worker_run(work: WorkDir, job: sources.Job) -> dict:
  return run_job(_processor, work, job)


def _pending(jobs, work: WorkDir, retry_skipped: bool) -> list[sources.Job]:
  todo = []
  for job in jobs:
    st = work.status(job)
    if st is None or st['status'] == 'error' or (
        retry_skipped and st['status'] == 'skipped'):
      todo.append(job)
  return todo


class _Progress:
  """tqdm over videos with a frames/s figure; ETA from the video rate."""

  def __init__(self, total: int, enabled: bool):
    self.bar = tqdm.tqdm(total=total, unit='video', disable=not enabled,
                         smoothing=0.05, dynamic_ncols=True)
    self.frames, self.start = 0, time.perf_counter()

  def update(self, status: dict) -> None:
    self.frames += status.get('frames_read', 0)
    rate = self.frames / max(time.perf_counter() - self.start, 1e-9)
    self.bar.set_postfix_str(f'{rate:.1f} frames/s', refresh=False)
    self.bar.update(1)

  def close(self) -> None:
    self.bar.close()


def process_jobs(jobs: Sequence[sources.Job], options: process.Options,
                 work_root: os.PathLike, num_workers: int | None = None,
                 retry_skipped: bool = False, progress: bool = True,
                 processor: process.Processor | None = None) -> WorkDir:
  """Processes every unfinished job; returns the work folder.

  Args:
    jobs: the jobs.
    options: processing options (resolved backend names).
    work_root: folder for records and statuses (one subfolder per options).
    num_workers: processes; default all cores. 1 runs in this process.
    retry_skipped: also redo jobs previously skipped for a reason.
    progress: show a progress bar.
    processor: in-process processor to use when num_workers == 1 (lets
      callers and tests inject backends).
  """
  work = WorkDir(pathlib.Path(work_root), options)
  work.path.mkdir(parents=True, exist_ok=True)
  todo = _pending(jobs, work, retry_skipped)
  num_workers = min(num_workers or default_num_workers(), max(len(todo), 1))
  bar = _Progress(len(todo), progress)
  try:
    if num_workers == 1:
      processor = processor or process.Processor(options)
      for job in todo:
        bar.update(run_job(processor, work, job))
    else:
      _run_pool(todo, work, options, num_workers, bar)
  finally:
    bar.close()
  return work


def _run_pool(todo, work, options, num_workers, bar) -> None:
  """Runs jobs on a process pool; survives worker deaths."""
  queue, crashes = list(reversed(todo)), {}
  ctx = multiprocessing.get_context('spawn')  # no fork of TF/torch threads
  while queue:
    in_flight = {}
    with concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=ctx, initializer=_init_worker,
        initargs=(options,)) as pool:
      try:
        while queue or in_flight:
          while queue and len(in_flight) < 2 * num_workers:
            job = queue.pop()
            in_flight[pool.submit(_worker_run, work, job)] = job
          done, _ = concurrent.futures.wait(
              in_flight, return_when=concurrent.futures.FIRST_COMPLETED)
          for future in done:
            status = future.result()  # raises if the pool broke
            del in_flight[future]
            bar.update(status)
      except concurrent.futures.process.BrokenProcessPool:
        for job in in_flight.values():
          crashes[job.key] = crashes.get(job.key, 0) + 1
          if crashes[job.key] < _MAX_CRASHES:
            queue.append(job)
            continue
          status = {'key': job.key, 'split': job.split, 'status': 'skipped',
                    'reason_code': 'worker_crash',
                    'reason': 'worker process died on this video '
                              f'{_MAX_CRASHES} times (decoder/model crash)',
                    'sources': [s.path for s in job.sequences]}
          _write_json(work.files(job)[1], status)
          bar.update(status)


def write_report(jobs: Sequence[sources.Job], work: WorkDir,
                 ignored: Sequence[str] = ()) -> dict:
  """Writes report.jsonl and report_summary.json; returns the summary.

  The summary counts all videos ('videos', 'by_status', 'skip_reasons') and,
  per split, the videos kept and the skipped ones by reason ('splits').
  """
  statuses = [work.status(job) or {'key': job.key, 'split': job.split,
                                   'status': 'pending'} for job in jobs]
  summary = {'videos': len(jobs), 'frames_read': 0, 'frames_kept': 0,
             'by_status': {}, 'skip_reasons': {}, 'dropped_frames': {},
             'splits': {}, 'ignored_files': len(ignored)}
  for job, st in zip(jobs, statuses):
    _tally(summary, job.split, st)
  with open(work.path / 'report.jsonl', 'w') as f:
    for st in statuses:
      f.write(json.dumps(st) + '\n')
    for path in ignored:
      f.write(json.dumps({'key': path, 'status': 'ignored',
                          'reason_code': 'not_media',
                          'reason': 'not a video or image file'}) + '\n')
  _write_json(work.path / 'report_summary.json', summary)
  return summary


def _count(counts: dict, key: str, n: int = 1) -> None:
  counts[key] = counts.get(key, 0) + n


def _tally(summary: dict, split: str, st: dict) -> None:
  """Adds one video's status to the summary."""
  _count(summary['by_status'], st['status'])
  summary['frames_read'] += st.get('frames_read', 0)
  summary['frames_kept'] += st.get('frames_kept', 0)
  per_split = summary['splits'].setdefault(split,
                                           {'videos': 0, 'skipped': {}})
  if st['status'] == 'ok':
    per_split['videos'] += 1
  else:
    _count(per_split['skipped'], st.get('reason_code', st['status']))
  if st['status'] in ('skipped', 'error'):
    _count(summary['skip_reasons'], st['reason_code'])
  for k, v in st.get('dropped', {}).items():
    _count(summary['dropped_frames'], k, v)
