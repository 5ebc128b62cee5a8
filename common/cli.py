"""Every stage's command line: its options (one style, defaults from dvc.yaml) and how it reports a user's mistake.

A missing input, a malformed file, a bad setting or an output that cannot be written
(a full disk, a read-only folder) is `<prog>: error: <message>` on
stderr and exit status 2, as argparse reports a bad command line, not a traceback;
the message names the file or setting and what to do. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import re
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
        last_line = text.rstrip().rsplit("\n", 1)[-1]  # "common.cli.InputError: <message>"
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


DVC_YAML = Path(__file__).resolve().parents[1] / "dvc.yaml"  # the project's pipeline, beside the packages


def command_options(stage: str, dvc_yaml: Path = DVC_YAML) -> dict[str, str]:
    """Every `--flag value` of `stage`'s command in dvc.yaml (a foreach stage's template: values may hold ${key});
    {} where there is no dvc.yaml (the code installed elsewhere)."""
    if not dvc_yaml.is_file():
        return {}
    stage_spec = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"][stage]
    tokens = stage_spec.get("do", stage_spec)["cmd"].split()
    return {flag: value for flag, value in zip(tokens, tokens[1:], strict=False) if flag.startswith("--")}


class StageParser(argparse.ArgumentParser):
    """The one command-line style of the stages: every path the stage's command in dvc.yaml passes is an option whose
    default IS that value, so each path is written once, in dvc.yaml. A value taken from params.yaml there
    (`${crawl.dir}`) defaults to None (the stage reads that key); a foreach template (`models/${key}`) is required. An
    option declared with a default of its own is a mistake, as is a dvc.yaml flag the code does not declare."""

    def __init__(self, stage: str, **kwargs: Any) -> None:
        self.stage, self.from_dvc_yaml = stage, command_options(stage)  # before argparse adds --help through us
        super().__init__(epilog=f"Defaults: the {stage} stage's command in dvc.yaml.", **kwargs)

    def add_argument(self, *flags: Any, **kwargs: Any) -> argparse.Action:
        value = self.from_dvc_yaml.get(next((f for f in flags if str(f).startswith("--")), ""))
        if value is not None:
            if "default" in kwargs or "required" in kwargs:
                raise ValueError(f"{flags[0]}: its default is the {self.stage} stage's value in dvc.yaml ({value})")
            params_key = re.fullmatch(r"\$\{([\w.]+)\}", value)
            if params_key and params_key.group(1) != "key":
                kwargs["help"] = f"{kwargs.get('help', '')} (default: {params_key.group(1)} in params.yaml)"
            elif "${" in value:
                kwargs["required"] = True
            else:
                kwargs["default"] = kwargs.get("type", str)(value)
                kwargs["help"] = f"{kwargs.get('help', '')} (default: {value})"
        return super().add_argument(*flags, **kwargs)

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        declared = {option for action in self._actions for option in action.option_strings}
        if undeclared := sorted(set(self.from_dvc_yaml) - declared):
            raise ValueError(f"dvc.yaml passes {undeclared} to the {self.stage} stage, which does not declare them")
        return super().parse_args(args, namespace)
