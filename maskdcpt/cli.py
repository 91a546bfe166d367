"""What every command-line tool shares: one-line errors for the user's problems, and argument parsing in which
options and ``key=value`` overrides mix in any order.

``@tool_main`` wraps a tool's ``main(argv) -> int``: a :class:`~maskdcpt.errors.UserError` (a config key, a file,
a folder the user can fix) and the operating system's refusals to write (a read-only folder, a full disk, no
permission) print ``error: <one line>`` on stderr and return 2. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import errno
import functools
import re
import sys
from typing import Any, Callable, Sequence

from .errors import UserError

__all__ = ["tool_main", "parse_args", "add_resume_args", "describe_os_error"]

# OSErrors that describe the machine, not the program: report them in one line.
_ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                       errno.EEXIST, errno.EISDIR, errno.ENAMETOOLONG}
_OVERRIDE = re.compile(r"^[A-Za-z_][\w.\[\]]*=")


def describe_os_error(err: OSError) -> str:
    """An OSError as one line naming the path and what to do."""
    path = err.filename if err.filename is not None else "a file"
    if err.filename2 is not None:
        path = f"{path} → {err.filename2}"
    hint = {
        errno.EACCES: "check its permissions or choose another location",
        errno.EPERM: "check its permissions or choose another location",
        errno.EROFS: "the file system is read-only: choose another location",
        errno.ENOSPC: "the disk is full: free space or choose another location",
        errno.EDQUOT: "the disk quota is exceeded: free space or choose another location",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EEXIST: "it exists already and is not what is needed here (a file where a folder is needed?)",
        errno.EISDIR: "it is a folder where a file is needed",
        errno.ENAMETOOLONG: "the name is too long",
    }.get(err.errno or 0, "")
    return f"{path}: {err.strerror or err}" + (f" ({hint})" if hint else "")


def _one_line(err: UserError) -> str:
    """The error's own message. A DataLoader worker's error reaches the main process with the worker's traceback
    inside its message ("Caught DataError in DataLoader worker process 0. Original Traceback …"); its last line
    holds the original message."""
    text = str(err)
    if "\nOriginal Traceback" in text:
        text = text.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return text


def tool_main(main: Callable[..., int | None]) -> Callable[..., int]:
    """Decorate a tool's ``main(argv=None)``: the user's problems become one line on stderr and status 2; Ctrl-C
    that reaches it (a tool without a training loop, or a second Ctrl-C in one) ends with one line and status 130."""

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> int:
        try:
            return main(*args, **kwargs) or 0
        except UserError as err:
            print(f"error: {_one_line(err)}", file=sys.stderr)
        except KeyboardInterrupt:  # a second Ctrl-C (the first stops training with a checkpoint)
            print("interrupted", file=sys.stderr)
            return 130
        except OSError as err:
            if err.errno not in _ENVIRONMENT_ERRNOS:
                raise
            print(f"error: {describe_os_error(err)}", file=sys.stderr)
        return 2

    return wrapped


class _ResumeAction(argparse.Action):
    """``--resume [CKPT]``: a following ``key=value`` is an override, not the checkpoint."""

    def __call__(self, parser, namespace, values, option_string=None):
        if isinstance(values, str) and _OVERRIDE.match(values):
            namespace._resume_overrides = [*getattr(namespace, "_resume_overrides", []), values]
            values = True
        setattr(namespace, self.dest, True if values is None else values)


def add_resume_args(parser: argparse.ArgumentParser) -> None:
    """``--resume [CKPT]`` / ``--no-resume`` (default: resume automatically when the run has a checkpoint)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", nargs="?", const=True, default="auto", metavar="CKPT", action=_ResumeAction,
                       help="resume from the run folder's last checkpoint (default: automatic if one exists) or CKPT")
    group.add_argument("--no-resume", dest="resume", action="store_false",
                       help="start fresh even if a checkpoint exists")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``parser.parse_intermixed_args``: options and positional ``key=value`` overrides in any order
    (``run.name=x --no-resume data.crop_size=64``)."""
    args = parser.parse_intermixed_args(argv)
    extra = vars(args).pop("_resume_overrides", [])
    if extra:
        args.overrides = [*extra, *getattr(args, "overrides", [])]
    return args

