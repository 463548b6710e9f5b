"""The argument rules and the error handler shared by every command (``recbole_etegrec.commands``).

Argument rules (``parse_args``), the same for every entry point:

* the entry point's declared options parse as in argparse (``--name value`` or ``--name=value``),
  but never by abbreviation (``--debug_s`` is not ``--debug_samples``: it is a config key);
* any other ``--key=value`` is a config override, handed unchanged to ``Config(cmd_args=...)``;
* ``--key value`` becomes ``--key=value`` when ``value`` is not itself an option (a value may be
  negative: ``--lr_rec -0.001``);
* a bare ``--flag`` (last, or followed by another option) means ``--flag=True``;
* anything else (a stray word) is an error. Entry points that take no config overrides
  (``prepare``, ``recommend``, ``export_lora``) reject every undeclared option.

Errors (``handle``): an ``EtegrecError`` -- a user mistake, argparse's usage errors included --
prints ``error: <message>`` as one line on stderr and exits 2; Ctrl-C prints one line and exits
130; neither prints a traceback. ``--help`` prints the help and exits 0.
"""
import argparse
import sys
from typing import Callable, List, NoReturn, Optional, Sequence, Tuple

from recbole_etegrec.errors import EtegrecError

OVERRIDE_HINT = "config overrides look like --key=value"


class UsageError(EtegrecError):
    """A malformed command line (argparse's own errors included): one ``error:`` line, exit 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse without option abbreviations, whose usage errors raise ``UsageError``."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0  # store_true/store_false/count/help take none


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None,
               overrides: bool = True) -> Tuple[argparse.Namespace, List[str]]:
    """``(declared options, config overrides as '--key=value' strings)`` under the module's rules.
    ``argv`` defaults to ``sys.argv[1:]``; ``overrides=False`` rejects every undeclared option."""
    argv = list(sys.argv[1:] if argv is None else argv)
    declared = parser._option_string_actions

    def is_option(token: str) -> bool:
        return token.startswith("--") or token.partition("=")[0] in declared

    known, cmd_args, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        name = arg.partition("=")[0]
        if arg == "--":  # argparse's end of options: the rest is positional
            known += argv[i:]
            break
        if name in declared:
            known.append(arg)
            if "=" not in arg and _takes_value(declared[name]) and i + 1 < len(argv):
                known.append(argv[i + 1])
                i += 1
        elif overrides and arg.startswith("--") and len(name) > 2:
            if "=" in arg:
                cmd_args.append(arg)
            elif i + 1 < len(argv) and not is_option(argv[i + 1]):
                cmd_args.append(f"{arg}={argv[i + 1]}")
                i += 1
            else:
                cmd_args.append(f"{arg}=True")
        else:  # a positional, or (without overrides) an undeclared option: argparse decides
            known.append(arg)
        i += 1
    args, stray = parser.parse_known_args(known)
    if stray:
        hint = f": {OVERRIDE_HINT}" if overrides else f" (see '{parser.prog} --help')"
        raise UsageError(f"unrecognized argument '{stray[0]}'{hint}")
    return args, cmd_args


def handle(command: Callable[[], Optional[int]]) -> int:
    """Run ``command`` and return its exit code (``None`` -> 0), the one error policy of every
    entry point: ``EtegrecError`` -> one ``error: ...`` line on stderr and 2; Ctrl-C -> one
    line and 130. Anything else is a bug and keeps its traceback."""
    try:
        code = command()
    except EtegrecError as err:
        message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"error: {message or type(err).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if code is None else int(code)
