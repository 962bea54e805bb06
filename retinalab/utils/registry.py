"""Named registries: one decorated definition adds a backbone, a dataset reader or an acquisition.

A :class:`Registry` maps names to objects. Its ``register`` decorator adds a definition where it is
written (``@register_backbone("convnet")``), so adding one never touches an if-chain, a ``Literal`` or
an error string elsewhere: the command line's error lists and ``--help`` come from :meth:`names`.

A name of the form ``package.module:name`` imports ``package.module`` first; the module's decorator
registers ``name``. That is how a lab's own backbone or acquisition reaches a config without a change
to retinalab: ``backbone: mylab.nets:tiny`` in the YAML, ``@register_backbone("tiny")`` in
``mylab/nets.py``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Definitions of one kind (``kind``: how messages call them, e.g. ``backbone``) by name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding the class or function it decorates under ``name``."""

        def decorate(obj: T) -> T:
            self.add(name, obj, qualname(obj))
            return obj

        return decorate

    def add(self, name: str, obj: T, origin: str) -> None:
        """Add ``obj`` under ``name``; ``origin`` (``module.qualname`` of its definition) tells a module
        imported again, which may register the same name, from another definition taking it (refused)."""
        held = self._origins.get(name)
        if held is not None and held != origin:
            raise ValueError(f"{self.kind} {name!r} is registered already, by {held}")
        self._entries[name] = obj
        self._origins[name] = origin

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests register toys and take them away)."""
        self._entries.pop(name, None)
        self._origins.pop(name, None)

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def get(self, name: str, option: str | None = None) -> T:
        """The definition registered as ``name``; ``module:name`` imports ``module`` first.

        Raises:
            ConfigError: ``name`` unknown (listing the registered names; ``option`` says which option
                gave it), or its module cannot be imported.
        """
        if name in self._entries:
            return self._entries[name]
        where = f"{option}: " if option else ""
        if ":" in name:
            module, _, short = name.partition(":")
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise ConfigError(
                    f"{where}{name!r}: cannot import {module!r} to find {self.kind} {short!r} ({e})"
                ) from e
            if short in self._entries:
                return self._entries[short]
            raise ConfigError(
                f"{where}{module} registers no {self.kind} {short!r}; registered: {', '.join(self._entries)}"
            )
        raise ConfigError(
            f"{where}unknown {self.kind} {name!r}; choose one of {', '.join(self._entries)} "
            f"(or module:name of a module that registers one)"
        )


def qualname(obj: object) -> str:
    """``module.qualname`` of a class or function (what :meth:`Registry.add` takes as ``origin``)."""
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
