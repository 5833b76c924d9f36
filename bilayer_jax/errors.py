"""The base class of errors a user can cause and fix (bad path, bad flag, bad file), and CLI exit codes.

Every module raises its own subclass (e.g. `model_io.ParamsDirError`) with a message that names the file,
key or field and what was expected. Entry points catch `UserError` through `bilayer_jax.cli.main_wrapper` and
print that message as one line; anything else is a bug and keeps its traceback.
"""

# Process exit codes of every command-line entry point (documented in the README, "Reliability").
EXIT_OK = 0
EXIT_FAILURE = 1  # a bug or an unexpected failure (with its traceback)
EXIT_USER_ERROR = 2  # bad input: one line `error: ...` on stderr, nothing written
# Preempted (SIGTERM/SIGINT): state saved, rerun the same command to resume. 75 is sysexits' EX_TEMPFAIL,
# which batch schedulers' requeue rules can key on (SLURM --requeue scripts, k8s podFailurePolicy).
EXIT_PREEMPTED = 75


class UserError(Exception):
  """An error in what the user gave (paths, flags, config values, input files), not in the program."""


class InvalidArgumentError(UserError, ValueError):
  """A value the user passed (flag, argument, config field, dataset split) that the program does not accept."""
