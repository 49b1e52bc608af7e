"""Reading and validating integration files, reporting every problem at once.

``load_integrations`` validates the envelope and each plugin's section before anything
connects; problems come back as one ``ConfigError`` whose issues read
``file:line:col  field.path: message`` with a hint.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, ValidationError

from zetl.config.model import IntegrationConfig
from zetl.config.yamlfile import LoadedYaml, load_yaml
from zetl.errors import ConfigError, ConfigIssue, NotInstalledError, PluginError, UnknownPluginError
from zetl.filters.expr import ExpressionError
from zetl.filters.position import at_expression_column
from zetl.registry import check_installed, load_plugin, suggest
from zetl.sink import Sink, SinkConfig
from zetl.source import Source, SourceConfig

__all__ = ["Integration", "collect_files", "load_integration", "load_integrations", "parse_integration"]

_SECRET_WORDS = ("password", "secret", "token", "key", "credential")


@dataclass(frozen=True)
class Integration:
    """A validated integration: the envelope, and each plugin with its validated config."""

    config: IntegrationConfig
    file: Path | None
    source_class: type[Source]
    source_config: SourceConfig
    sink_class: type[Sink]
    sink_config: SinkConfig

    @property
    def name(self) -> str:
        return self.config.name


def _unwrap(annotation: Any) -> list[Any]:
    """The model classes an annotation may hold (through Optional, list, dict, Annotated)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, tuple, set, frozenset, dict):
        args = typing.get_args(annotation)
        if origin is dict and args:
            args = args[1:]
        out: list[Any] = []
        for a in args:
            out += _unwrap(a)
        return out
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return None
        if isinstance(part, int) or part not in current.model_fields:
            continue  # list index or dict key: same model continues
        models = _unwrap(current.model_fields[part].annotation)
        current = models[0] if models else None
    return current


def _clean_loc(loc: tuple[Any, ...], data: Any) -> tuple[str | int, ...]:
    """Drop pydantic's internal loc parts (validator names, union branch names)."""
    out: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            out.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out.append(part)
            node = node[part]
        elif isinstance(part, str) and ("[" in part or "-" in part):
            continue
        else:
            out.append(part)
            node = None
    return tuple(out)


def _issues_from_validation(
    exc: ValidationError, model: type[BaseModel], data: Any, loaded: LoadedYaml, prefix: tuple[str | int, ...]
) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for err in exc.errors(include_url=False):
        raw_loc = tuple(err["loc"])
        loc = _clean_loc(raw_loc, data)
        path = prefix + loc
        kind = err["type"]
        if kind == "extra_forbidden":
            key = str(loc[-1])
            parent_model = _model_at(model, tuple(raw_loc[:-1]))
            supported = sorted(parent_model.model_fields) if parent_model else []
            close = suggest(key, supported)
            message = f"unknown key '{key}'." + (f" Did you mean '{close}'?" if close else "")
            issues.append(loaded.issue(path, message, f"supported keys: {', '.join(supported)}" if supported else None, key=True))
        elif kind == "missing":
            parent = path[:-1]
            where = f"under '{'.'.join(map(str, parent))}'" if parent else "at the top level"
            issues.append(loaded.issue(parent, f"required key '{path[-1]}' is missing" if path else "required key is missing", f"add '{path[-1]}: ...' {where}"))
            issues[-1] = ConfigIssue(issues[-1].file, issues[-1].line, issues[-1].column, ".".join(map(str, path)), issues[-1].message, issues[-1].hint)
        else:
            message = str(err["msg"])
            if message.startswith("Value error, "):
                message = message[len("Value error, ") :]
            message = message[:1].lower() + message[1:]
            secret = any(w in str(p).lower() for p in path for w in _SECRET_WORDS)
            value = err.get("input")
            hint = None
            if kind in ("model_type", "dict_type"):
                message = f"expected a mapping of keys to values, got {_yaml_kind(value)}"
                if path and path[-1] in ("source", "sink"):
                    hint = f"write it as '{path[-1]}:' followed by indented lines 'type: <plugin>' and the plugin's keys"
            elif not secret and isinstance(value, (str, int, float, bool)) and repr(value) not in message:
                message += f" (got {value!r})"
            if kind == "list_type" and isinstance(value, (str, dict)):
                hint = "this should be a list; maybe a '-' is missing in the YAML"
            issues.append(loaded.issue(path, message, hint))
            cause = err.get("ctx", {}).get("error")
            if isinstance(cause, ExpressionError):  # point at the problem inside a row filter
                issues[-1] = at_expression_column(issues[-1], cause, value)
    return issues


def _yaml_kind(value: Any) -> str:
    if isinstance(value, str):
        return f"the text {value!r}"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return f"the value {value!r}"


def _resolve_plugin(kind: str, section: Any, loaded: LoadedYaml, issues: list[ConfigIssue]) -> tuple[type[Any] | None, Any]:
    if not isinstance(section, dict) or not isinstance(section.get("type"), str):
        return None, None
    type_name = section["type"]
    try:
        plugin = load_plugin(kind, type_name, Path(loaded.file).parent)  # type: ignore[arg-type]
    except UnknownPluginError as exc:
        close = suggest(type_name, exc.installed)
        message = f"unknown {kind} type '{type_name}'." + (f" Did you mean '{close}'?" if close else "")
        issues.append(loaded.issue((kind, "type"), message, f"installed {kind}s: {', '.join(exc.installed) or 'none'}"))
        return None, None
    except PluginError as exc:
        issues.append(loaded.issue((kind, "type"), exc.message))
        return None, None
    try:
        check_installed(plugin)
    except NotInstalledError as exc:
        issues.append(loaded.issue((kind, "type"), exc.message))
        return None, None
    options = {k: v for k, v in section.items() if k != "type"}
    try:
        return plugin, plugin.config_class.model_validate(options)
    except ValidationError as exc:
        issues.extend(_issues_from_validation(exc, plugin.config_class, options, loaded, (kind,)))
        return plugin, None


def parse_integration(loaded: LoadedYaml) -> tuple[Integration | None, list[ConfigIssue]]:
    """Validate one loaded document; returns the integration (None on error) and all issues."""
    issues = list(loaded.issues)
    data = loaded.data
    if loaded.data is None:
        return None, issues
    if not isinstance(data, dict):
        issues.append(loaded.issue((), "an integration file must be a mapping (name:, source:, sink:, ...)"))
        return None, issues
    config: IntegrationConfig | None = None
    try:
        config = IntegrationConfig.model_validate(data)
        config.filters.remember_positions(loaded.file, loaded.where)
    except ValidationError as exc:
        issues.extend(_issues_from_validation(exc, IntegrationConfig, data, loaded, ()))
    source_class, source_config = _resolve_plugin("source", data.get("source"), loaded, issues)
    sink_class, sink_config = _resolve_plugin("sink", data.get("sink"), loaded, issues)
    if issues or config is None or source_config is None or sink_config is None:
        return None, sorted(issues, key=lambda i: (i.line, i.column))
    return (
        Integration(config, Path(loaded.file), source_class, source_config, sink_class, sink_config),  # type: ignore[arg-type]
        [],
    )


def collect_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand directories into their ``*.yaml``/``*.yml`` files (recursively, sorted)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.suffix in (".yaml", ".yml") and q.is_file())
        else:
            files.append(p)
    return files


def load_integration(path: str | Path) -> Integration:
    """Load and validate one file; raises ``ConfigError`` listing every problem."""
    return load_integrations([path])[0]


def load_integrations(paths: Iterable[str | Path]) -> list[Integration]:
    """Load and validate files and directories; raises one ``ConfigError`` with every problem
    of every file, including integration names used twice."""
    files = collect_files(paths)
    issues: list[ConfigIssue] = []
    result: list[Integration] = []
    if not files:
        raise ConfigError(ConfigIssue(", ".join(map(str, paths)) or ".", 0, 0, "", "no integration files (*.yaml, *.yml) found"))
    seen: dict[str, tuple[str, int]] = {}
    for file in files:
        loaded = load_yaml(file)
        integration, found = parse_integration(loaded)
        issues += found
        if integration is None:
            continue
        line = loaded.where(("name",))[0]
        if integration.name in seen:
            other_file, other_line = seen[integration.name]
            issues.append(
                loaded.issue(
                    ("name",),
                    f"integration name '{integration.name}' is already used in {other_file}:{other_line}",
                    "each integration needs its own name: checkpoints are kept by name",
                )
            )
            continue
        seen[integration.name] = (str(file), line)
        result.append(integration)
    if issues:
        raise ConfigError(issues)
    return result
