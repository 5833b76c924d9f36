"""Every command-line entry point: user errors are one line `error: ...` with exit code 2, bugs keep their
traceback, BILAYER_JAX_TRACEBACK=1 shows it anyway."""

import subprocess
import sys

import pytest

from bilayer_jax import cli
from bilayer_jax import errors

import train_utils


def _main_raising(error):
  def main():
    raise error
  return main


def test_a_user_error_is_one_line_and_exit_2(capsys, monkeypatch):
  monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
  with pytest.raises(SystemExit) as ended:
    cli.user_errors_as_one_line(_main_raising(errors.InvalidArgumentError('--x 3: expected 1 or 2')))()
  assert ended.value.code == errors.EXIT_USER_ERROR
  assert capsys.readouterr().err == 'error: --x 3: expected 1 or 2\n'


def test_a_bug_keeps_its_traceback_and_the_switch_shows_user_errors_in_full(monkeypatch):
  with pytest.raises(ZeroDivisionError):
    cli.user_errors_as_one_line(_main_raising(ZeroDivisionError()))()
  monkeypatch.setenv(cli.TRACEBACK_ENV, '1')
  with pytest.raises(errors.InvalidArgumentError):
    cli.user_errors_as_one_line(_main_raising(errors.InvalidArgumentError('x')))()


@pytest.mark.parametrize('module,args,expected', [
    ('bilayer_jax.import_original', ['--run_dir=/nonexistent', '--epoch=1', '--out=OUT'], '/nonexistent'),
    ('bilayer_jax.import_original', ['--run_dir=/x', '--epoch=1', '--out=OUT', '--family=flame'],
     "--family='flame': expected one of bilayer, fsth, lpd"),
    ('bilayer_jax.export', ['--params=/nonexistent', '--format=original', '--out=OUT'], '/nonexistent'),
    ('bilayer_jax.parity', ['--bogus=1'], "Unknown command line flag 'bogus'"),
    ('bilayer_jax.evaluate', ['--config=/nonexistent/config.py', '--workdir=OUT'], '/nonexistent/config.py'),
])
def test_tools_print_one_line_and_write_nothing(module, args, expected, tmp_path):
  args = [a.replace('OUT', str(tmp_path / 'out')) for a in args]
  run = subprocess.run([sys.executable, '-m', module, *args], cwd=train_utils.REPO, capture_output=True, text=True,
                       timeout=300)
  assert run.returncode == errors.EXIT_USER_ERROR, run.stderr[-2000:]
  assert 'Traceback' not in run.stderr and 'error: ' in run.stderr and expected in run.stderr, run.stderr[-2000:]
  assert not (tmp_path / 'out').exists()


def test_private_flags_parse_twice_in_a_process_and_bad_flags_are_user_errors(capsys):
  from absl import flags  # pylint: disable=g-import-not-at-top

  def parse(argv):
    fv = flags.FlagValues()
    flags.DEFINE_integer('n', 1, 'a number', flag_values=fv)
    return cli.parse_private_flags(fv, 'prog', argv, 'usage: prog [--n N]')

  assert parse(['--n=3']).n == 3 and parse([]).n == 1
  with pytest.raises(errors.InvalidArgumentError, match="flag --n=x"):
    parse(['--n=x'])
  with pytest.raises(errors.InvalidArgumentError, match=r"unexpected arguments \['b.mp4'\]"):
    parse(['--n=2', 'b.mp4'])
  with pytest.raises(SystemExit) as ended:
    parse(['--help'])
  assert ended.value.code == errors.EXIT_OK and 'usage: prog' in capsys.readouterr().out
