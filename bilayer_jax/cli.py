"""What every command-line entry point shares: user errors as one line, documented exit codes.

  if __name__ == '__main__':
    cli.run(main)           # absl.app.run(main) with user errors printed as `error: <message>`

A `errors.UserError` raised anywhere below `main` prints `error: <message>` on stderr and exits with
`errors.EXIT_USER_ERROR`; set BILAYER_JAX_TRACEBACK=1 to see the traceback as well. Any other exception is
a bug and propagates with its traceback. Bad flags, and misspelt `--config.<field>` overrides of
ml_collections configs, are one line and exit 2 too (`parse_flags`).
"""

import ast
import functools
import os
import sys
from typing import Callable

from absl import app
from absl import flags
from ml_collections import config_flags

from bilayer_jax import errors

TRACEBACK_ENV = 'BILAYER_JAX_TRACEBACK'


def _wants_traceback() -> bool:
  return os.environ.get(TRACEBACK_ENV, '') not in ('', '0')


def user_errors_as_one_line(main: Callable) -> Callable:
  """Wraps `main` so that a UserError exits with one line instead of a traceback."""

  @functools.wraps(main)
  def wrapped(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except errors.UserError as e:
      if _wants_traceback():
        raise
      print(f'error: {e}', file=sys.stderr, flush=True)
      sys.exit(errors.EXIT_USER_ERROR)

  return wrapped


def _one_line(error: BaseException) -> str:
  """ml_collections reports a misspelt field as the repr of a KeyError message: unquote it, one line."""
  text = str(error)
  if len(text) > 1 and text[0] == text[-1] and text[0] in '"\'':
    try:
      text = ast.literal_eval(text)
    except (SyntaxError, ValueError):
      pass
  return '. '.join(line.strip() for line in text.splitlines() if line.strip())


def parse_flags(argv):
  """absl's flag parsing, with bad flags and misspelt `--config.<field>` overrides as one line and exit 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e)
  except (AttributeError, KeyError, TypeError, ValueError) as e:  # ml_collections config overrides
    message = f'a --config.<field> override names no such field: {_one_line(e)}'
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(errors.EXIT_USER_ERROR)


def parse_private_flags(flag_values: flags.FlagValues, program: str, argv, usage: str) -> flags.FlagValues:
  """Parses `argv` (without the program name) into `flag_values`, a FlagValues of the program's own (so its
  main can run more than once in a process, e.g. from tests). `--help` prints `usage` and the flags and
  exits 0; a bad flag, or an argument that is not a flag (e.g. the rest of an unquoted glob, or `--flag value`
  for a boolean), raises InvalidArgumentError (one line)."""
  if '--help' in argv or '-h' in argv:
    print(usage + '\n' + flag_values.get_help())
    sys.exit(errors.EXIT_OK)
  try:
    leftover = flag_values([program, *argv])[1:]
  except flags.Error as e:
    raise errors.InvalidArgumentError(str(e)) from e
  if leftover:
    raise errors.InvalidArgumentError(f'unexpected arguments {leftover} (quote globs; booleans are --flag or '
                                      '--noflag)')
  return flag_values


def loaded_config(flag_name: str = 'config'):
  """The ml_collections config of a `config_flags.DEFINE_config_file` flag; a config file that cannot be
  loaded is a one-line user error naming it."""
  try:
    config = flags.FLAGS[flag_name].value
    config.get('stage')  # a file that failed to load raises on first use
    return config
  except OSError as e:
    path = config_flags.get_config_filename(flags.FLAGS[flag_name])
    cause = e.__cause__ or e
    what = 'no such file' if not os.path.exists(path.split(':')[0]) else f'cannot be loaded ({cause})'
    raise errors.UserError(f'--{flag_name}={path}: {what}') from e


def run(main: Callable) -> None:
  """absl.app.run(main) with user errors as one line (see the module docstring)."""
  app.run(user_errors_as_one_line(main), flags_parser=parse_flags)
