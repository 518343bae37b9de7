"""The ``recist-seg`` command: the library's functions for whole datasets, without a GUI."""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from pathlib import Path

from . import __version__

_COMMANDS = {}


def command(name: str, help: str, configure=None):
    """Register ``func(args)`` as subcommand ``name``; ``configure(parser)`` adds its options."""

    def decorate(func):
        _COMMANDS[name] = (func, help, configure)
        return func

    return decorate


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand; with ``only``, the options of
    that subcommand alone are added (the others keep their one-line help), since reading
    some options' defaults imports the learning layer, seconds a call."""
    parser = argparse.ArgumentParser(
        prog="recist-seg",
        description=(
            "Weakly supervised lesion segmentation from RECIST marks: pseudo-masks, lesion "
            "groups, multi-task training and comparison against the A1 and co-segmentation "
            "baselines."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.subcommands = {}
    for name, (func, help_text, configure) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if configure is not None and only in (None, name):
            configure(p)
        p.set_defaults(_run=func)
        parser.subcommands[name] = p
    return parser


def main(argv=None) -> int:
    """Entry point of ``recist-seg``; returns the process exit code."""
    try:
        code = _command(argv)
    except KeyboardInterrupt:
        # Ctrl+C before the command started (while its libraries load): nothing to keep.
        print("recist-seg: interrupted", file=sys.stderr)
        code = 130
    if "torch.distributed" in sys.modules:
        # A torchrun process ends here, past the C++ teardown that can abort it.
        from .learning.devices import end_process

        code = end_process(code)
    return code


def _command(argv) -> int:
    from . import commands  # noqa: F401  (registers the subcommands)
    from .learning.run_folders import RunFolderBusy

    given = sys.argv[1:] if argv is None else list(argv)
    # The subcommand comes first (recist-seg COMMAND ...); --version and --help need none.
    parser = build_parser(only=given[0] if given and given[0] in _COMMANDS else "")
    args, unknown = parser.parse_known_args(given)
    if unknown:
        # Said with the subcommand's usage, which lists the options it does take.
        where = parser.subcommands.get(getattr(args, "command", None), parser)
        where.error(f"unrecognized arguments: {' '.join(unknown)}")
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 0
    previous = _terminate_as_interrupt()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(args.command, warnings.showwarning)
            return int(args._run(args) or 0)
    except (ValueError, OSError, RunFolderBusy) as exc:
        # Bad input and file-system trouble (missing, unreadable, read-only, full disk) are
        # the user's to fix: one line naming the problem, not a traceback.
        print(f"recist-seg {args.command}: error: {_describe(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        from .learning.devices import is_main_process

        if is_main_process():  # once, not once per torchrun process
            print(f"recist-seg {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)


def _terminate_as_interrupt():
    """Let SIGTERM (a batch scheduler's time limit, ``timeout``, ``kill``) stop a command as
    Ctrl+C does: training saves a resumable ``last/``, partial outputs are taken away.
    Returns the handler it replaced (None where none was replaced)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    with contextlib.suppress(ValueError, OSError):
        return signal.signal(signal.SIGTERM, signal.default_int_handler)
    return None


_MAX_MESSAGE = 600
_PACKAGE = Path(__file__).resolve().parent


def _one_line_warning(command: str, fallback):
    """A ``warnings.showwarning`` that prints this package's warnings (a skipped row, a
    duplicate lesion) as one line addressed to the user, without the source line that
    Python's format adds; other libraries' warnings keep their usual form."""

    def show(message, category, filename, lineno, file=None, line=None):
        try:
            ours = Path(filename).resolve().is_relative_to(_PACKAGE)
        except (OSError, ValueError, TypeError):
            ours = False
        if not ours:
            return fallback(message, category, filename, lineno, file, line)
        print(f"recist-seg {command}: warning: {_describe(Exception(str(message)))}",
              file=file if file is not None else sys.stderr)

    return show


def _describe(exc: Exception) -> str:
    """``exc`` as one short line; an OSError gets its file name and reason.

    A file name may be thousands of characters long or hold control characters (a NUL, a
    newline): it is shown escaped and shortened, so the message stays one readable line.
    """
    text = str(exc)
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{_short_path(exc.filename)}: {exc.strerror}"
    text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
    if len(text) > _MAX_MESSAGE:
        half = _MAX_MESSAGE // 2 - 3
        text = f"{text[:half]} ... {text[-half:]}"
    return text or type(exc).__name__


def _short_path(name) -> str:
    text = str(name)
    text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
    if len(text) > 160:
        text = f"{text[:70]}...{text[-70:]} ({len(str(name))} characters)"
    return text


if __name__ == "__main__":
    # Run as ``python -m napari_recist_seg.cli``, this file is ``__main__`` while the commands
    # register themselves in the imported ``napari_recist_seg.cli``: use that one's main.
    from napari_recist_seg.cli import main as _main

    raise SystemExit(_main())
