"""Finds sources and sinks: entry points ``zetl.sources`` / ``zetl.sinks``, or ``pkg.module:Class``.

The core never imports a plugin module until a configuration names it, and a plugin module never
imports its driver at import time; ``check_installed`` reports a missing extra before connecting.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Literal

from zetl.errors import NotInstalledError, PluginError, UnknownPluginError
from zetl.sink import Sink
from zetl.source import Source

__all__ = ["PluginInfo", "available", "check_installed", "load_plugin", "suggest"]

Kind = Literal["source", "sink"]
_GROUPS: dict[str, str] = {"source": "zetl.sources", "sink": "zetl.sinks"}


@dataclass(frozen=True)
class PluginInfo:
    kind: Kind
    name: str
    target: str  # "module:Class"
    distribution: str | None


@lru_cache(maxsize=None)
def _entry_points(kind: Kind) -> dict[str, PluginInfo]:
    found: dict[str, PluginInfo] = {}
    for ep in entry_points(group=_GROUPS[kind]):
        dist = getattr(getattr(ep, "dist", None), "name", None)
        found.setdefault(ep.name, PluginInfo(kind, ep.name, ep.value, dist))
    return found


def available(kind: Kind) -> list[PluginInfo]:
    """Registered plugins of a kind, sorted by name."""
    return sorted(_entry_points(kind).values(), key=lambda p: p.name)


def suggest(word: str, choices: list[str]) -> str | None:
    """The closest choice to ``word``, or None if nothing is close."""
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return match[0] if match else None


def _import_module(module_name: str, search: Path | None) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # A module next to the YAML file is found too, so a custom plugin needs no install step.
        if search is None or exc.name != module_name.split(".")[0] or not search.is_dir():
            raise
        sys.path.insert(0, str(search))
        try:
            return importlib.import_module(module_name)
        finally:
            sys.path.remove(str(search))


def _import_target(kind: Kind, target: str, search: Path | None = None) -> type[Source] | type[Sink]:
    module_name, _, attr = target.partition(":")
    if not attr:
        raise PluginError(f"{kind} type {target!r} is not a plugin name or a 'package.module:Class' path")
    try:
        module = _import_module(module_name, search)
    except ImportError as exc:
        raise PluginError(f"cannot import module {module_name!r} for {kind} type {target!r}: {exc}") from exc
    try:
        cls = getattr(module, attr)
    except AttributeError:
        names = [n for n in dir(module) if not n.startswith("_")]
        close = suggest(attr, names)
        hint = f" Did you mean {module_name}:{close}?" if close else ""
        raise PluginError(f"module {module_name!r} has no attribute {attr!r}.{hint}") from None
    base = Source if kind == "source" else Sink
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(f"{target!r} is not a subclass of zetl.{base.__name__}")
    return cls


def load_plugin(kind: Kind, type_name: str, search: Path | None = None) -> type[Source] | type[Sink]:
    """The plugin class for a YAML ``type:`` value.

    A ``package.module:Class`` path is imported from the installed packages, or else from
    ``search`` (the YAML file's folder).

    Raises:
        UnknownPluginError: no plugin of that name ("Did you mean ...?" and the installed list).
        PluginError: a dotted path that cannot be imported or is not a Source/Sink.
    """
    if ":" in type_name:
        return _import_target(kind, type_name, search)
    plugins = _entry_points(kind)
    info = plugins.get(type_name)
    if info is None:
        names = sorted(plugins)
        close = suggest(type_name, names)
        did_you_mean = f" Did you mean '{close}'?" if close else ""
        raise UnknownPluginError(
            f"unknown {kind} type '{type_name}'.{did_you_mean} Installed {kind}s: {', '.join(names) or 'none'}",
            kind=kind,
            name=type_name,
            installed=names,
        )
    return _import_target(kind, info.target)


def check_installed(plugin: type[Source] | type[Sink]) -> None:
    """Raise ``NotInstalledError`` if a module the plugin requires cannot be imported."""
    for module in plugin.requires:
        if importlib.util.find_spec(module.split(".")[0]) is None:
            extra = plugin.extra or plugin.name
            what = f"{plugin.name.capitalize()} {'source' if issubclass(plugin, Source) else 'sink'}"
            raise NotInstalledError(f"{what} not installed: pip install 'zetl[{extra}]' (missing module {module!r})", extra=extra)
