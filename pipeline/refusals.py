"""Refusals: a run that will not start, or will not go on, as it was asked to.

    raise BadSetting("--resolution must be a positive multiple of 8, got 7")
    with checking():                 # the checks a run makes before any work or record
        shards = checked_sources(cfg, store)

A refusal is the user's to fix (a setting, an input, another run on the output): every job on the plan
answers it with one line and exit status 2, and a refused run leaves nothing behind, not even its log file.
Anything else that escapes a run is a bug: exit status 1, its traceback in the log file (jobs/edit.py).
Keeping the two apart is why a check raises a `Refused` and never a bare ValueError: a ValueError from a
stage or the driver must not read as "bad setting".

This module imports nothing, so that every module that refuses something can import it.
"""

from __future__ import annotations

import contextlib
from typing import Iterator


class Refused(Exception):
    """The run was refused, or stopped on purpose; the message says what and how to go on."""

    # shown before the message: a bad setting reads as itself, a refused output or input says so
    LABEL = "refused: "


class BadSetting(Refused, ValueError):
    """A flag, a setting or an input that cannot work as given (a ValueError, for callers that catch those)."""

    LABEL = ""


class NotFound(Refused, FileNotFoundError):
    """An input, a model or a list file that is not there."""

    LABEL = ""


class InputGone(NotFound):
    """An input shard that was there when the run was planned and is not found while it runs."""


@contextlib.contextmanager
def checking() -> Iterator[None]:
    """The checks before any work: a ValueError or FileNotFoundError raised inside is a refusal of the
    run's settings or inputs (BadSetting / NotFound, chained to the original). Outside this block, the same
    exceptions are bugs."""
    try:
        yield
    except Refused:
        raise
    except FileNotFoundError as e:
        raise NotFound(_text(e)) from e
    except ValueError as e:
        raise BadSetting(_text(e)) from e


def refusal_of(error: BaseException) -> Refused | None:
    """The refusal `error` stands for, or None. A refusal raised in a Ray task reaches the driver as a
    RayTaskError that is also an instance of the refusal's class; its `cause` is the refusal itself."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, Refused):
        return cause
    return error if isinstance(error, Refused) else None


def message(refusal: Refused, from_task: bool = False) -> str:
    """The refusal's line(s) as shown: its label and message. Ray appends its retry advice to a task's
    exception message (`from_task`): only the refusal's own first line is kept then."""
    text = _text(refusal)
    return refusal.LABEL + (text.splitlines()[0] if from_task and text else text)


def _text(error: BaseException) -> str:
    return str(error).strip() or type(error).__name__
