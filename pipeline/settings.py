"""Settings declared once: a dataclass field carries its flag, help, default, choices and whether it joins
the run fingerprint; the command line and the identity are derived from the fields.

    @dataclass(frozen=True)
    class OutputSettings:
        resize: Literal["fit", "crop", "reference"] = setting("fit", flag="--resize", help="...", identity=True)

    add_flags(parser_group, OutputSettings)         # --resize with choices from the Literal and its default
    from_args(OutputSettings, args)                 # the group, from the parsed flags
    identity_of(OutputSettings(resize="crop"))      # {"resize": "crop", ...}: the fields that decide outputs

Torch-free and Ray-free: `mgie-batch --help` imports it.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal

_META = "mgie_setting"


@dataclasses.dataclass(frozen=True)
class Flag:
    flag: str | None  # "--resize"; None: a setting without a flag (set by the job, or from the Python API)
    help: str
    identity: bool  # part of the run fingerprint
    omit_default: bool  # left out of the identity at its default, so runs from before it keep their fingerprint
    identity_key: str | None  # its name in the identity, when not the field's
    shown: str | None  # what --help says the default is, when not the value itself
    metavar: str | None
    parse: Any  # argparse `type` instead of the one the annotation gives
    repeat: bool  # the flag may be given several times (a tuple)
    negate: bool  # a bool whose flag turns it off (--no-progress sets progress False)
    required: bool
    choices: Any  # a function giving the choices, where they are known only at run time (registered presets)


def setting(
    default: Any = dataclasses.MISSING,
    *,
    flag: str | None = None,
    help: str = "",
    identity: bool = False,
    omit_default: bool = False,
    identity_key: str | None = None,
    shown: str | None = None,
    metavar: str | None = None,
    parse: Any = None,
    repeat: bool = False,
    negate: bool = False,
    default_factory: Any = dataclasses.MISSING,
    choices: Any = None,
) -> Any:
    """A dataclass field that is also a setting (see the module docstring). No default: a required flag."""
    meta = Flag(
        flag,
        help,
        identity,
        omit_default,
        identity_key,
        shown,
        metavar,
        parse,
        repeat,
        negate,
        default is dataclasses.MISSING and default_factory is dataclasses.MISSING,
        choices,
    )
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_META: meta})


def flag_of(f: dataclasses.Field) -> Flag | None:
    return f.metadata.get(_META)


def settings_of(cls) -> list[tuple[dataclasses.Field, Flag]]:
    """The fields of a settings group that are settings, in declaration order."""
    return [(f, flag_of(f)) for f in dataclasses.fields(cls) if flag_of(f) is not None]


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _choices(meta: Flag, annotation: Any) -> tuple[tuple | None, Any]:
    choices, kind = _choices_and_type(annotation)
    return (tuple(meta.choices()), kind) if meta.choices is not None else (choices, kind)


def _choices_and_type(annotation: Any) -> tuple[tuple | None, Any]:
    """Literal["a", "b"] -> (("a", "b"), str); int | None -> (None, int); tuple[str, ...] -> (None, str)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _choices_and_type(inner[0]) if len(inner) == 1 else (None, str)
    if typing.get_origin(annotation) is Literal:
        return args, type(args[0])
    if typing.get_origin(annotation) is tuple:
        return _choices_and_type(args[0])
    return None, annotation


def check_choices(group: Any) -> None:
    """Raises ValueError naming the flag for a setting whose value is not one of its Literal's choices (for
    a group made in Python; the command line's argparse refuses them first)."""
    hints = typing.get_type_hints(type(group))
    for f, meta in settings_of(type(group)):
        choices, _ = _choices(meta, hints[f.name])
        value = getattr(group, f.name)
        if choices and value is not None and value not in choices:
            name = meta.flag or f.name
            raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


def add_flags(
    container: Any, cls, defaults: dict[str, Any] | None = None, names: tuple[str, ...] = (), prefix: str = ""
) -> None:
    """One argparse flag per setting of `cls` with a flag (`names`: only those fields). `defaults`: a job's
    own defaults by field name (eval crops where edit fits), set here so that --help shows what the job uses.
    `prefix`: of the parsed names, where two groups name a field alike (ModelSpec.seed, SamplingSettings.seed)."""
    hints = typing.get_type_hints(cls)
    for f, meta in settings_of(cls):
        if meta.flag is None or (names and f.name not in names):
            continue
        default = (defaults or {}).get(f.name, _default(f))
        shown = meta.shown if meta.shown is not None and f.name not in (defaults or {}) else _show(default)
        text = meta.help if "(default:" in meta.help else f"{meta.help} (default: {shown})"
        kwargs: dict[str, Any] = {"dest": prefix + f.name, "help": text.replace("{default}", shown)}
        choices, kind = _choices(meta, hints[f.name])
        if kind is bool:
            kwargs.update(action="store_false" if meta.negate else "store_true", default=default)
        else:
            # "" as a choice is a field's "unset" (the model's own scheduler): the default, never typed
            choices = tuple(c for c in choices if c != "") if choices else None
            metavar = meta.metavar or (None if choices else meta.flag.lstrip("-").upper().replace("-", "_"))
            kwargs.update(type=meta.parse or kind, default=default, choices=choices, metavar=metavar)
            if meta.repeat:
                kwargs.update(action="append", default=None)
            if meta.required:
                kwargs.update(required=True, default=None)
        container.add_argument(meta.flag, **kwargs)


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if value is True or value is False:
        return "on" if value else "off"
    return str(value)


def from_args(cls, args: argparse.Namespace, prefix: str = "", **given: Any):
    """The group `cls` from parsed flags (`prefix` as given to add_flags); `given` fields (those without a
    flag, or derived) win."""
    values = {
        f.name: getattr(args, prefix + f.name)
        for f, meta in settings_of(cls)
        if meta.flag and hasattr(args, prefix + f.name)
    }
    return cls(**{**values, **given})  # a repeated flag's list: the group makes it what it holds (IOSettings)


def identity_of(group: Any) -> dict[str, Any]:
    """The group's settings that decide outputs, by their identity names; one left at its default is absent
    where it says `omit_default` (its identity is then that of a run from before it)."""
    out = {}
    for f, meta in settings_of(type(group)):
        value = getattr(group, f.name)
        if meta.identity and not (meta.omit_default and value == _default(f)):
            out[meta.identity_key or f.name] = value
    return out


def omitted_defaults(group_cls, section: str) -> dict[str, Any]:
    """{"<section>.<identity name>": default} of the settings an identity leaves out at their default: what an
    identity difference names instead of "None"."""
    return {
        f"{section}.{meta.identity_key or f.name}": _default(f)
        for f, meta in settings_of(group_cls)
        if meta.identity and meta.omit_default
    }
