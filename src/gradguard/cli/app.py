"""The argparse application and the error policy shared by every command.

Each topic module registers its subcommand with :func:`command`. Errors meant for users
(bad arguments, bad configs, missing data) become one line on stderr and exit code 2;
never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from pydantic import ValidationError
from rich_argparse import RichHelpFormatter

from ..errors import GradguardError, describe_validation_error

PROG = "gradguard"
DESCRIPTION = ("Protect federated-learning clients against gradient leakage attacks, "
               "and measure how well any defense does it.")


class UsageError(GradguardError):
    """A command-line argument is wrong."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are exceptions, so that :func:`run` prints one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], int | None]


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    """Register ``handler(args)`` as ``gradguard NAME``; ``configure(parser)`` adds its options."""

    def register(handler):
        COMMANDS[name] = Command(name, help, configure, handler)
        return handler

    return register


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description=DESCRIPTION, formatter_class=RichHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help, formatter_class=RichHelpFormatter)
        cmd.configure(p)
        p.set_defaults(handler=cmd.handler)
    return parser


def run(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        return args.handler(args) or 0
    except ValidationError as exc:
        message = describe_validation_error(exc)
    except GradguardError as exc:
        message = str(exc)
        code = getattr(exc, "exit_code", 2)
        if code != 2:  # not the user's input: the run failed (e.g. some cells raised)
            print(f"{PROG}: error: {' '.join(message.splitlines())}", file=sys.stderr)
            return code
    except OSError as exc:  # a path the user named cannot be read or written: their input, not a bug
        message = f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    print(f"{PROG}: error: {' '.join(message.splitlines())}", file=sys.stderr)  # always one line
    return 2
