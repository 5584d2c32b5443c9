"""What every command of `aq` parses its arguments with, whichever layer it belongs to.

`aq` is one command over several layers: `atomicqueues.cli` (the runtime's commands, and the
entry point that reaches the others by name), `schedule_cli`, `pools.cli` (`aq up`, `aq demo`),
`dashboard.cli` and `aq_operator.cli`. They share this module, below all of them, so that none
imports the entry point that dispatches to it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn

EXIT_USAGE = 2
EXIT_ERROR = 1


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"aq: {message} (see `{self.prog} --help`)\n")


def json_arg(text: str) -> Any:
    """JSON given inline, or read from a file (`@PATH`) or standard input (`-`)."""
    source = "payload"
    if text == "-":
        text, source = sys.stdin.read(), "standard input"
    elif text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as f:
                text, source = f.read(), text[1:]
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read {text[1:]!r}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid JSON in {source} ({exc})") from None


def positive(text: str) -> float:
    """A number of seconds (or other amount) that is not negative."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value
