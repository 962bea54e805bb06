"""Errors a user can fix, and how every ``retinalab`` command reports them.

A :class:`UserError` names the file or option at fault and says what to do. The command line
(:mod:`retinalab.cli`) prints it as one line, ``error: <what>. <what to do>``, and exits with code
2; the traceback appears only with ``--debug`` or ``RETINALAB_DEBUG=1``. Anything else (a bug, an
out-of-memory) keeps its traceback.

The data errors (:class:`~retinalab.datasets.DatasetNotFoundError`,
:class:`~retinalab.datasets.DataFormatError`), :class:`~retinalab.checkpoints.CheckpointError` and
:class:`~retinalab.active.oracle.LabelFileError` are user errors; :class:`ConfigError` covers the
rest (option values, reader arguments, split sizes, study files, another run's state).
"""

from __future__ import annotations

import argparse
import difflib
import errno
import inspect
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

DEBUG_ENV = "RETINALAB_DEBUG"


class UserError(Exception):
    """A problem with what the user gave (data, option, file), reported in one line.

    Attributes:
        check_data: ``(dataset, root)`` where ``retinalab check-data`` would list every problem of
            the same kind at once (set by :func:`retinalab.datasets.read_dataset` for data problems).
    """

    check_data: tuple[str, str] | None = None


class ConfigError(UserError, ValueError):
    """An option, a config value or a config file that cannot work (named in the message)."""


class OutputExistsError(UserError, FileExistsError):
    """An output folder already holds something a command would overwrite."""


class InputMissingError(UserError, FileNotFoundError):
    """A file a config names (weights, another run to match) does not exist."""


def debug_requested(argv: list[str]) -> bool:
    """True (and ``--debug`` removed from ``argv``) when the traceback of a user error is wanted."""
    flag = "--debug" in argv
    while "--debug" in argv:
        argv.remove("--debug")
    return flag or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


class StorageError(UserError, OSError):
    """A folder that cannot take what is written there: full, over quota, read-only or not ours."""


#: what the system's error numbers mean to a user who has to free space or choose another folder
STORAGE = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the folder is on a read-only file system",
    errno.EACCES: "permission denied",
    errno.EFBIG: "the file grew beyond what this file system or the process's file size limit allows",
}


def storage_error(e: OSError) -> StorageError:
    """One line for an :class:`OSError` of :data:`STORAGE`: the file, what went wrong, the free space left
    there, and what to do."""
    where = Path(e.filename) if e.filename else None
    notes = []
    existing = next((p for p in (where, *where.parents) if p.exists()), None) if where is not None else None
    if existing is not None and e.errno in (errno.ENOSPC, errno.EDQUOT):
        left = shutil.disk_usage(existing).free
        notes.append(f"{left / 2**20:.0f} MiB free there" if left >= 2**20 else f"{left // 1024} KiB free there")
    needs = re.search(r"needs [\d.]+ \w+", e.strerror or "")  # what retinalab.preprocessing.building.reserve asked for
    if needs:
        notes.append(needs.group(0))
    free = f" ({'; '.join(notes)})" if notes else ""
    fix = {
        errno.ENOSPC: "free some space there, or write elsewhere",
        errno.EDQUOT: "free some space there, or write elsewhere",
        errno.EFBIG: "raise the file size limit (ulimit -f), or write elsewhere",
    }.get(e.errno, "choose a folder you can write to")
    return StorageError(
        f"{where or 'writing a file'}: {STORAGE[e.errno]}{free}; {fix} (--trainer.default_root_dir, "
        "--data.cache_dir or $RETINALAB_CACHE, --out_dir); nothing half-written was kept"
    )


def user_error(e: BaseException) -> UserError | None:
    """``e`` if it is a :class:`UserError`, else the first one it was raised from (jsonargparse wraps
    what a class's ``__init__`` raises in its own ``ValueError ... from``), else ``None``. A full,
    read-only or forbidden folder (an :class:`OSError` of :data:`STORAGE`) is one too
    (:func:`storage_error`)."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, UserError):
            return cur
        if isinstance(cur, OSError) and cur.errno in STORAGE:
            return storage_error(cur)
        seen.add(id(cur))
        cur = cur.__cause__
    return None


def _message(e: BaseException) -> str:
    text = str(e) if str(e) else type(e).__name__
    # raised in a DataLoader worker: torch re-raises the same class with the worker's traceback inside
    if "Original Traceback" in text:
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last and re.match(r"^[\w.]+(Error|Exception): ", last) else last
    return " ".join(text.split())


def format_error(e: BaseException) -> str:
    """``error: <message>`` on one line, ending with the check-data pointer for data problems."""
    text = _message(e).removeprefix("error: ")
    if text and not text.endswith((".", "!", "?")):
        text += "."
    dataset_root = getattr(e, "check_data", None)
    if dataset_root and "check-data" not in text:
        dataset, root = dataset_root
        text += f" Run `retinalab check-data --dataset {dataset} --root {root}` to list every problem."
    return f"error: {text}"


def suggest(name: str, known: Iterable[str], prefix: str = "--") -> str:
    """``" Did you mean --width?"`` for the closest known name, else ``""``."""
    known = sorted(set(known))
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if not close:  # a dotted option: compare the last part among the known options of the same group
        head, _, tail = name.rpartition(".")
        same = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == head}
        last = difflib.get_close_matches(tail, list(same), n=1, cutoff=0.6) if head else []
        close = [same[last[0]]] if last else []
    return f" Did you mean {prefix}{close[0]}?" if close else ""


def class_parameters(class_path: str) -> list[str]:
    """The ``__init__`` parameters of ``class_path`` and its bases (what ``--model.<name>`` accepts)."""
    import importlib

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return []
    names: list[str] = []
    for klass in inspect.getmro(cls):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            continue
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


def check_arguments(
    func: Callable[..., Any], args: Mapping[str, Any], what: str, option: str, skip: Iterable[str] = ()
) -> None:
    """Check ``args`` (keyword arguments from a config) against ``func``'s signature before calling it.

    Raises:
        ConfigError: naming an unknown key with ``func``'s options (and the closest one), or a value
            of the wrong type with the expected type; ``option`` is how the user sets ``args``
            (``data.reader_args``).
    """
    from pydantic import TypeAdapter, ValidationError

    skip = set(skip)
    params = {n: p for n, p in inspect.signature(func).parameters.items() if n not in skip}
    options = ", ".join(f"{n} (default {p.default!r})" for n, p in params.items() if p.default is not p.empty) or "none"
    hints = _hints(func)
    flag = option if option.startswith("--") else f"--{option}"
    for key, value in args.items():
        name = f"`{key}` in {option}" if option.startswith("--") else f"`{option}.{key}`"
        if key not in params:
            raise ConfigError(
                f"{name} is not an option of the {what}; its options are "
                f"{options}.{suggest(key, params, prefix='' if option.startswith('--') else option + '.')} "
                f"Remove it, or use {flag} '{{}}' for the defaults"
            )
        hint = hints.get(key)
        if hint is None:
            continue
        try:
            TypeAdapter(hint).validate_python(value, strict=True)
        except ValidationError as e:
            expected = _type_name(hint)
            detail = e.errors()[0].get("msg", "")
            raise ConfigError(f"{name} = {value!r} does not fit the {what}: expected {expected} ({detail})") from None


def _hints(func: Callable[..., Any]) -> dict[str, Any]:
    import typing

    try:
        return typing.get_type_hints(func)
    except Exception:  # noqa: BLE001 - unresolvable annotations: no type check, the keys are still checked
        return {}


def _type_name(hint: Any) -> str:
    text = str(hint).replace("typing.", "").replace("collections.abc.", "").replace("pathlib.", "")
    text = re.sub(r"<class '(\w+)'>", r"\1", text)
    choices = re.fullmatch(r"Literal\[(.*)\]", text)  # Literal['all', 'rest'] -> 'all' or 'rest'
    if choices:
        values = [v.strip() for v in choices.group(1).split(",")]
        text = ", ".join(values[:-1]) + f" or {values[-1]}" if len(values) > 1 else values[0]
    return text


def _inner_union(message: str, keys: list[str]) -> str | None:
    """``--data.batches_per_epoch: expected int, 'unlabeled' or None, got '1.5'`` from jsonargparse's report
    of an option whose union type no subtype accepted, nested inside its class's report (the group's own
    union is the outer one)."""
    found = list(
        re.finditer(
            r'Parser key "([\w.]+)":\s*\n\s*Does not validate against any of the Union subtypes\s*\n\s*'
            r"Subtypes: \[(.*)\]\s*\n",
            message,
        )
    )
    inner = [m for m in found if not keys or m.group(1) != keys[0]]
    if not inner:
        return None
    m = inner[-1]
    given = re.search(r"Given value: ([^\n]*)", message[m.end() :])
    if not given:
        return None
    key = m.group(1)
    name = key if not keys or key.startswith(keys[0] + ".") or key == keys[0] else f"{keys[0]}.{key}"
    subtypes = [
        "None" if t == "<class 'NoneType'>" else _type_name(t)
        for t in re.findall(r"<class '[\w.]+'>|typing\.Literal\[[^\]]*\]|[\w.]+\[[^\]]*\]|[\w.]+", m.group(2))
    ]
    expected = ", ".join(subtypes[:-1]) + f" or {subtypes[-1]}" if len(subtypes) > 1 else subtypes[0]
    return f"--{name}: expected {expected}, got {given.group(1).strip()!r}"


class ArgumentParser(argparse.ArgumentParser):
    """argparse for retinalab's own commands: a bad or misspelt option is a one-line :class:`ConfigError`
    (with the closest option) instead of the usage text and argparse's exit."""

    def error(self, message: str) -> NoReturn:
        m = re.match(r"unrecognized arguments: (.*)", message)
        if m:
            first = m.group(1).split()[0]
            known = [s[2:] for a in self._actions for s in a.option_strings if s.startswith("--")]
            raise ConfigError(
                f"{self.prog}: unknown option {first}.{suggest(first.lstrip('-').split('=')[0], known)} "
                f"Run `{self.prog} --help` for the options"
            )
        raise ConfigError(f"{self.prog}: {message}. Run `{self.prog} --help` for the options")


class OneLineParserErrors:
    """Mixin for jsonargparse parsers: a misspelt or mistyped option is one :class:`ConfigError` line
    naming it (and the closest known one) instead of the usage text and jsonargparse's nested union
    report. Parsers jsonargparse builds for itself with ``exit_on_error=False`` keep raising its
    ``ArgumentError``, which it handles."""

    def parse_args(self, args: Sequence[str] | None = None, *rest: Any, **kwargs: Any) -> Any:
        self._given_args = list(args) if args is not None else sys.argv[1:]  # the config files, for messages
        return super().parse_args(args, *rest, **kwargs)  # type: ignore[misc]

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not getattr(self, "exit_on_error", True):
            super().error(message, ex)  # type: ignore[misc]
        parser = getattr(ex, "subcommand_parser", None) or self
        known = [a.dest for a in getattr(parser, "_actions", []) if a.dest and a.dest not in ("help", "config")]
        if '"<unicode string>"' in message:  # YAML's name for the text it parsed: name the file instead
            message = message.replace('"<unicode string>"', broken_config(getattr(self, "_given_args", [])))
        raise ConfigError(condense_parser_error(message, known))


def broken_config(args: Sequence[str]) -> str:
    """The first ``--config`` file among ``args`` that is not valid YAML (``"the config"`` if none is)."""
    import yaml

    files = [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    files += [b for a, b in zip(args, args[1:], strict=False) if a == "--config"]
    for name in files:
        try:
            yaml.safe_load(Path(name).read_text())
        except yaml.YAMLError:
            return name
        except OSError:
            continue
    return "the config"


_BOILERPLATE = re.compile(
    r"^(Does not validate against any of the Union subtypes|Subtypes:|Errors:|Given value( type)?:|- Expected a <class "
    r"'NoneType'>|"
    r"Parser key \"\w+\":$)"
)


#: option values that became classes: (option, old value) -> the class path to give instead
RENAMED_VALUES = {("labeled_selection", "egl"): "retinalab.active.EGLChooser"}
#: class paths that moved (an earlier run's saved config.yaml still names them): old module -> new one
MOVED_MODULES = {"retinalab.callbacks": "retinalab.lightning", "retinalab.loggers": "retinalab.lightning"}


def condense_parser_error(message: str, known: Iterable[str]) -> str:
    """One line from jsonargparse's nested error message, naming the option (``--model.width``) and,
    for an unknown one, the closest of ``known`` (dotted keys: ``model.width``, ``trainer.max_epochs``)."""
    known = list(known)
    moved = re.search(r"\b(" + "|".join(re.escape(k) for k in MOVED_MODULES) + r")\.(\w+)", message)
    if moved:
        old, new = f"{moved.group(1)}.{moved.group(2)}", f"{MOVED_MODULES[moved.group(1)]}.{moved.group(2)}"
        return f"{old} is now {new}; change the class_path in the config (an earlier run's config.yaml too)"
    m = re.search(r"Subcommand '(\w+)' does not accept option '([\w.]+)'", message)
    if m:  # a key at the top of a config file (trainr:), or --trainr.max_epochs
        sub, name = m.groups()
        top = sorted({k.split(".")[0] for k in known} - {"print_config"})
        hint = suggest(name.split(".")[0], top, prefix="")
        return (
            f"{name} is not an option of retinalab {sub} (a config's top-level keys are {', '.join(top)}).{hint} "
            "Run with --help for the options"
        )
    m = re.search(r"[Uu]nrecognized arguments: (\S+)", message)
    if m:
        name = m.group(1).lstrip("-").split("=")[0]
        return f"unknown option --{name}.{suggest(name, known)} Run with --help for the options"
    group = re.match(r'\s*Parser key "([\w.]+)"', message)
    cls = re.search(r"class_path '([\w.]+)'", message)
    owner = cls.group(1).rsplit(".", 1)[-1] if cls else None
    m = re.search(
        r"Option '(\w+)' is not accepted|No action for key \"([\w.]+)\"|Key \"([\w.]+)\" is not expected", message
    )
    if m:
        key = next(g for g in m.groups() if g)
        name = f"{group.group(1)}.{key}" if group and not key.startswith(group.group(1) + ".") else key
        params = class_parameters(cls.group(1)) if cls else []
        pool = [f"{group.group(1)}.{p}" for p in params] if group and params else known
        where = f" of {owner}" if owner else ""
        return f"--{name} is not an option{where}.{suggest(name, pool)} Run with --help for the options"
    keys = re.findall(r'Parser key "([\w.]+)"', message)
    m = re.search(r"NestedArg\(key='([\w.]+)', val='([^']*)'\)", message)
    if m and "dot import path" in message:  # a class-typed option given a plain word
        name = f"{keys[0]}.{m.group(1)}" if keys else m.group(1)
        now = RENAMED_VALUES.get((m.group(1), m.group(2)))
        hint = f" ({m.group(2)!r} is now --{name} {now})" if now else ""
        return f"--{name}: expected the import path of a class (package.module.ClassName), got {m.group(2)!r}{hint}"
    m = re.search(r"Expected a (.+?)\. Got value: (.*)", message)
    if m and keys:  # keys: the group ("model") and, nested inside its class's report, the option
        name = (
            keys[0] if len(keys) == 1 else keys[-1] if keys[-1].startswith(keys[0] + ".") else f"{keys[0]}.{keys[-1]}"
        )
        expected = _type_name(m.group(1))
        return f"--{name}: expected {expected}, got {m.group(2).strip()!r}"
    union = _inner_union(message, keys)
    if union:
        return union
    single = re.fullmatch(r'Parser key "([\w.]+)": ([^\n]+)', message.strip())
    if single:
        return f"--{single.group(1)}: {single.group(2)}"
    lines = [ln.strip() for ln in message.splitlines() if ln.strip() and not _BOILERPLATE.match(ln.strip())]
    detail = " ".join(lines[-2:] if len(lines) > 1 else lines)
    prefix = f"--{keys[0]}: " if keys and f'"{keys[0]}"' not in detail else ""
    return f"{prefix}{detail}"
