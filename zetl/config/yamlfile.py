"""YAML loading that remembers where every value came from, and resolves secret references.

``${env:VAR}`` is replaced by the environment variable (``${env:VAR:-default}`` gives a default),
``${file:/path}`` by the file's content without its trailing newline. References are resolved
inside strings only, never evaluated otherwise. Duplicate keys are errors, not silently merged.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zetl.errors import ConfigIssue

__all__ = ["LoadedYaml", "load_yaml"]

Path_ = tuple[str | int, ...]

_REFERENCE = re.compile(r"\$\{(env|file):([^}]*)\}")


@dataclass
class LoadedYaml:
    """A parsed document with the (line, column) of every key and value, by path."""

    file: str
    data: Any
    marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    key_marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    issues: list[ConfigIssue] = field(default_factory=list)

    def where(self, path: Path_, *, key: bool = False) -> tuple[int, int]:
        """The position of ``path`` or of its nearest ancestor that exists."""
        p = tuple(path)
        while True:
            if key and p in self.key_marks:
                return self.key_marks[p]
            if p in self.marks:
                return self.marks[p]
            if not p:
                return (1, 1)
            p = p[:-1]

    def issue(self, path: Path_, message: str, hint: str | None = None, *, key: bool = False) -> ConfigIssue:
        line, col = self.where(path, key=key)
        return ConfigIssue(self.file, line, col, dotted(path), message, hint)


def dotted(path: Path_) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


class _Builder:
    def __init__(self, loaded: LoadedYaml, loader: yaml.SafeLoader) -> None:
        self.loaded = loaded
        self.loader = loader

    def build(self, node: yaml.Node, path: Path_) -> Any:
        self.loaded.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = self.loader.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    key = str(key)
                kpath = path + (key,)
                if key in result:
                    first = self.loaded.key_marks[kpath]
                    self.loaded.issues.append(
                        ConfigIssue(
                            self.loaded.file,
                            key_node.start_mark.line + 1,
                            key_node.start_mark.column + 1,
                            dotted(kpath),
                            f"duplicate key '{key}' (first defined at line {first[0]})",
                            "remove one of the two",
                        )
                    )
                    continue
                self.loaded.key_marks[kpath] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                result[key] = self.build(value_node, kpath)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        value = self.loader.construct_object(node, deep=True)
        if isinstance(value, str) and "${" in value:
            value = self._resolve(value, path)
        return value

    def _resolve(self, text: str, path: Path_) -> str:
        def replace(match: re.Match[str]) -> str:
            scheme, ref = match.group(1), match.group(2).strip()
            if scheme == "env":
                name, _, default = ref.partition(":-")
                if name in os.environ:
                    return os.environ[name]
                if ":-" in ref:
                    return default
                self.loaded.issues.append(
                    self.loaded.issue(path, f"environment variable '{name}' is not set", f"export {name}=... before running zetl, or write ${{env:{name}:-default}}")
                )
                return ""
            file_path = Path(os.path.expanduser(ref))
            if not file_path.is_absolute():
                file_path = Path(self.loaded.file).parent / file_path
            try:
                return file_path.read_text().rstrip("\n")
            except OSError as exc:
                self.loaded.issues.append(self.loaded.issue(path, f"cannot read file '{ref}': {exc.strerror}", "check the path and its permissions"))
                return ""

        return _REFERENCE.sub(replace, text)


def load_yaml(file: str | Path, text: str | None = None) -> LoadedYaml:
    """Parse one YAML document. Problems (syntax, duplicate keys, missing references) are
    collected in ``issues`` rather than raised, so that every error can be reported at once."""
    file = str(file)
    loaded = LoadedYaml(file=file, data=None)
    if text is None:
        try:
            text = Path(file).read_text()
        except OSError as exc:
            loaded.issues.append(ConfigIssue(file, 0, 0, "", f"cannot read file: {exc.strerror}"))
            return loaded
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        loaded.issues.append(ConfigIssue(file, line, col, "", f"invalid YAML: {exc.problem or exc}", "check the indentation and quoting around this line"))
        return loaded
    except yaml.YAMLError as exc:
        loaded.issues.append(ConfigIssue(file, 0, 0, "", f"invalid YAML: {exc}"))
        return loaded
    finally:
        loader.dispose()
    if node is None:
        loaded.data = {}
        return loaded
    loaded.data = _Builder(loaded, yaml.SafeLoader("")).build(node, ())
    return loaded
