"""How every stage's command line reports a mistake of the user's.

A missing input, a malformed file, a bad setting or an output that cannot be written
(a full disk, a read-only folder) is `<prog>: error: <message>` on
stderr and exit status 2, as argparse reports a bad command line, not a traceback;
the message names the file or setting and what to do. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml


class InputError(ValueError):
    """A file or setting the user gave is missing or malformed; the message names it and what to do."""


class OutputError(RuntimeError):
    """An output cannot be written (a full disk, a read-only folder); the message names the file and what to do."""


USER_ERRORS = (InputError, OutputError, FileNotFoundError)


def report_user_errors(prog: str, command: Callable[[], int], errors: tuple[type[Exception], ...] = USER_ERRORS) -> int:
    """Run a stage's `command`; one of `errors` becomes `<prog>: error: <message>` on stderr and exit status 2."""
    try:
        return command()
    except errors as error:
        print(f"{prog}: error: {user_message(error)}", file=sys.stderr)
        return 2


def read_yaml(path: Path, error: type[InputError], missing: str) -> Any:
    """The parsed YAML file. `error` names it, with `missing` as the advice, when it is not there,
    and the line and column where it stops being YAML (or UTF-8) otherwise."""
    if not path.is_file():
        raise error(f"{path}: {missing}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise error(f"{path}{where}: not valid YAML ({exc.problem or exc.context})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid YAML ({exc})") from None


def user_message(error: Exception) -> str:
    """The message of `error`, for the user.

    For an error a torch DataLoader worker raised, the worker's own message, without the
    traceback torch wraps it in. A missing file is named with a hint (the stages raise
    InputError with their own advice): open() gives its filename, pandas/pyarrow give the
    path as the only argument.
    """
    text = str(error)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        last_line = text.rstrip().rsplit("\n", 1)[-1]  # "pipeline.cli.InputError: <message>"
        return last_line.split(": ", 1)[-1]
    if isinstance(error, FileNotFoundError):
        named_by_pandas = error.errno is None and len(error.args) == 1
        missing = error.filename if error.filename is not None else error.args[0] if named_by_pandas else None
        if missing is not None:
            return (
                f"{missing}: not found (if a stage writes it, `dvc repro` runs the stages in order; otherwise check "
                "the path)"
            )
    return text
