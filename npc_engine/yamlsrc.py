"""YAML loading that remembers the line every value came from.

Writers get errors as ``path:line: message``, so the loader keeps positions:
mappings load as :class:`YMap` (a ``dict`` that also knows the line of each key
and value) and sequences as :class:`YSeq` (a ``list`` that knows the line of
each item). Both pass through pydantic like plain dicts and lists; models that
derive from :class:`Sourced` keep a reference to the mapping they were built
from, so later checks (a ``goto`` naming a missing beat, say) can point at the
exact line too.

Only PyYAML's safe node composer is used: no Python object tags, no ``eval``.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, model_validator

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class SourceError:
    """One problem in an authored file, printed as ``path:line: message``.

    ``line`` is 1-based; 0 means the problem concerns the whole file or folder.
    Warnings print as ``path:line: warning: message`` and do not fail a load.
    """

    file: str
    line: int
    message: str
    severity: Severity = "error"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:" if self.line > 0 else f"{self.file}:"
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{where} {prefix}{self.message}"


class ValidationFailed(Exception):
    """Authored content has errors; ``errors`` lists every one found (warnings included)."""

    def __init__(self, errors: Sequence[SourceError]) -> None:
        self.errors: list[SourceError] = sorted(errors, key=sort_key)
        real = [e for e in self.errors if e.is_error] or self.errors
        shown = "\n".join(str(e) for e in real[:20])
        more = f"\n... and {len(real) - 20} more" if len(real) > 20 else ""
        super().__init__(
            f"{len(real)} error(s) in characters/story files (run `npc-engine check` for the full list):\n"
            f"{shown}{more}"
        )


def sort_key(e: SourceError) -> tuple[str, int, int, str]:
    return (e.file, e.line, 0 if e.is_error else 1, e.message)


# --------------------------------------------------------------------------- located containers


class YMap(dict[str, Any]):
    """A YAML mapping with the line of every key and value (keys are the text as written)."""

    file: str
    line: int
    key_lines: dict[str, int]
    value_lines: dict[str, int]

    def __init__(self, file: str, line: int) -> None:
        super().__init__()
        self.file = file
        self.line = line
        self.key_lines = {}
        self.value_lines = {}

    def with_key(self, key: str, value: Any, line: int | None = None) -> YMap:
        """A copy with one more key (used to inject ids that come from a file name or a parent key)."""
        out = YMap(self.file, self.line)
        out[key] = value
        out.key_lines[key] = out.value_lines[key] = self.line if line is None else line
        for k, v in self.items():
            if k == key:
                continue
            out[k] = v
            out.key_lines[k] = self.key_lines[k]
            out.value_lines[k] = self.value_lines[k]
        return out


class YSeq(list[Any]):
    """A YAML sequence with the line of every item."""

    file: str
    line: int
    item_lines: list[int]

    def __init__(self, file: str, line: int) -> None:
        super().__init__()
        self.file = file
        self.line = line
        self.item_lines = []


Loc = Sequence[str | int]


def locate(root: Any, loc: Loc, *, key: bool = False, default: int = 1) -> int:
    """The line of the value at ``loc`` under ``root`` (of its key when ``key``).

    Walks as far as the path exists and returns the deepest line found, so a
    path into a missing field still lands on its parent.
    """
    line = getattr(root, "line", default)
    node = root
    for i, step in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, YMap):
            if not isinstance(step, str) or step not in node:
                break
            line = node.key_lines[step] if (last and key) else node.value_lines[step]
            node = node[step]
        elif isinstance(node, YSeq):
            if not isinstance(step, int) or not 0 <= step < len(node):
                break
            line = node.item_lines[step]
            node = node[step]
        else:
            break
    return line


def node_at(root: Any, loc: Loc) -> Any:
    """The value at ``loc`` under ``root``, or None where the path does not exist."""
    node = root
    for step in loc:
        in_map = isinstance(node, YMap) and isinstance(step, str) and step in node
        in_seq = isinstance(node, YSeq) and isinstance(step, int) and 0 <= step < len(node)
        if not (in_map or in_seq):
            return None
        node = node[step]
    return node


def suggest(word: str, options: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` when ``word`` is a likely typo of one of ``options``, else ``""``."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# --------------------------------------------------------------------------- parsing

_HINTS = {
    "found character '\\t' that cannot start any token": "a tab character: indent with spaces only",
    "mapping values are not allowed here": (
        "a ': ' inside a value (put the text in quotes) or a line indented wrongly"
    ),
    "could not find expected ':'": "a line is missing the ':' between a field name and its value",
    "found unexpected end of stream": "a quote was opened and never closed",
}


def parse_yaml(text: str, file: str) -> Any:
    """Parse one YAML document into YMap/YSeq/scalars; raises ValidationFailed on syntax errors."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            raise ValidationFailed([_syntax_error(e, file)]) from None
        except yaml.YAMLError as e:  # unmarked errors are rare (reader errors on odd bytes)
            raise ValidationFailed([SourceError(file, 1, f"YAML error: {e}")]) from None
        if node is None:
            return None
        errors: list[SourceError] = []
        value = _convert(node, loader, file, errors, {})
        if errors:
            raise ValidationFailed(errors)
        return value
    finally:
        loader.dispose()


def load_yaml_file(path: Path, display: str | None = None) -> Any:
    """Read and parse a YAML file; every problem is raised as ValidationFailed with its line."""
    file = display if display is not None else str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValidationFailed(
            [SourceError(file, 1, "the file is not UTF-8 text: save it as UTF-8")]
        ) from None
    except OSError as e:
        raise ValidationFailed([SourceError(file, 0, f"cannot read the file: {e.strerror}")]) from None
    return parse_yaml(text, file)


def _syntax_error(e: yaml.MarkedYAMLError, file: str) -> SourceError:
    problem = e.problem or str(e)
    mark = e.problem_mark
    # "could not find ':'" and "end of stream" are detected a line (or a file) after the
    # real mistake: the context mark points at the key / quote that started it.
    if e.context_mark is not None and (
        "could not find expected ':'" in problem or "end of stream" in problem or mark is None
    ):
        mark = e.context_mark
    line = mark.line + 1 if mark is not None else 1
    hint = next((h for p, h in _HINTS.items() if p in problem), "")
    message = f"YAML syntax error: {problem}"
    if hint:
        message += f" ({hint})"
    return SourceError(file, line, message)


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _convert(
    node: yaml.Node, loader: yaml.SafeLoader, file: str, errors: list[SourceError], seen: dict[int, Any]
) -> Any:
    if id(node) in seen:  # an alias: the same node again
        return seen[id(node)]
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
        out = YMap(file, _line(node))
        seen[id(node)] = out
        for key_node, value_node in node.value:
            # Keys stay as written: YAML 1.1 would otherwise turn `on:`/`yes:` into True.
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
            if key is None:
                errors.append(SourceError(file, _line(key_node), "a field name must be plain text"))
                continue
            if key in out:
                errors.append(
                    SourceError(
                        file,
                        _line(key_node),
                        f"duplicate field '{key}' (first written on line {out.key_lines[key]})",
                    )
                )
                continue
            out[key] = _convert(value_node, loader, file, errors, seen)
            out.key_lines[key] = _line(key_node)
            # An empty value (`key:` alone) has its mark wherever the next token is.
            empty = isinstance(value_node, yaml.ScalarNode) and value_node.value == ""
            out.value_lines[key] = _line(key_node) if empty else _line(value_node)
        return out
    if isinstance(node, yaml.SequenceNode):
        seq = YSeq(file, _line(node))
        seen[id(node)] = seq
        for item in node.value:
            seq.append(_convert(item, loader, file, errors, seen))
            seq.item_lines.append(_line(item))
        return seq
    return loader.construct_object(node, deep=True)


# --------------------------------------------------------------------------- pydantic glue


class Sourced(BaseModel):
    """A model that remembers the YAML mapping it was validated from (for error lines)."""

    model_config = ConfigDict(extra="forbid")
    # Fields filled in by the loader (from a file name or a parent key), not written by authors.
    INJECTED: ClassVar[frozenset[str]] = frozenset()

    _src: YMap | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_source(cls, data: Any, handler: Any) -> Any:
        inst = handler(data)
        if isinstance(data, YMap) and isinstance(inst, Sourced):
            inst._src = data
        return inst

    @property
    def src_file(self) -> str:
        return self._src.file if self._src is not None else "<code>"

    def src_line(self, *loc: str | int, key: bool = False) -> int:
        """The line of this model, or of the field at ``loc`` inside it (0 if built in code)."""
        if self._src is None:
            return 0
        return locate(self._src, loc, key=key)

    def problem(self, message: str, *loc: str | int, key: bool = False, warning: bool = False) -> SourceError:
        """A SourceError pointing at this model (or the field at ``loc``)."""
        return SourceError(
            self.src_file, self.src_line(*loc, key=key), message, "warning" if warning else "error"
        )


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(models) == 1:
            return models[0]
        if len(args) == 1:
            return args[0]
    return tp


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    tp: Any = model
    for step in loc:
        tp = _strip_optional(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if isinstance(step, str) and step in tp.model_fields:
                tp = tp.model_fields[step].annotation
                continue
            return None
        origin = get_origin(tp)
        if origin in (list, tuple) or (isinstance(origin, type) and issubclass(origin, Sequence)):
            tp = get_args(tp)[0]
        elif origin is dict or (isinstance(origin, type) and issubclass(origin, Mapping)):
            tp = get_args(tp)[1]
        else:
            return None
    tp = _strip_optional(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def field_names(model: type[BaseModel]) -> list[str]:
    """The field names an author may write for ``model``."""
    injected: frozenset[str] = getattr(model, "INJECTED", frozenset())
    return [name for name in model.model_fields if name not in injected]


def dotted(loc: Loc) -> str:
    out = ""
    for step in loc:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


def validation_errors(exc: ValidationError, root: Any, model: type[BaseModel]) -> list[SourceError]:
    """Turn a pydantic ValidationError on data from ``root`` into SourceErrors with lines."""
    file = getattr(root, "file", "<input>")
    out: list[SourceError] = []
    seen: set[tuple[int, str]] = set()
    for err in exc.errors():
        loc: tuple[str | int, ...] = tuple(err["loc"])
        kind = err["type"]
        if kind == "missing":
            parent = loc[:-1]
            line = locate(root, parent, key=True) if parent else getattr(root, "line", 1)
            where = f"{dotted(parent)}: " if parent else ""
            message = f"{where}missing required field '{loc[-1]}'"
        elif kind == "extra_forbidden":
            line = locate(root, loc, key=True)
            owner = _model_at(model, loc[:-1])
            allowed = field_names(owner) if owner is not None else []
            hint = suggest(str(loc[-1]), allowed)
            if not hint and allowed:
                hint = f" (allowed here: {', '.join(allowed)})"
            where = f"{dotted(loc[:-1])}: " if loc[:-1] else ""
            message = f"{where}unknown field '{loc[-1]}'{hint}"
        else:
            # A whole mapping is wrong (a rule across its fields): point at the key that names it.
            line = locate(root, loc, key=isinstance(node_at(root, loc), YMap))
            msg = str(err["msg"])
            for prefix in ("Value error, ", "Assertion failed, "):
                msg = msg.removeprefix(prefix)
            msg = msg[:1].lower() + msg[1:]
            value = err.get("input")
            if isinstance(value, bool) and kind == "string_type":
                msg += " (YAML reads yes/no/on/off/true/false as a true/false value: put the text in quotes)"
            elif (
                isinstance(value, (str, int, float)) and not isinstance(value, bool) and kind != "value_error"
            ):
                msg += f" (got {value!r})"
            where = f"{dotted(loc)}: " if loc else ""
            message = f"{where}{msg}"
        if (line, message) in seen:
            continue
        seen.add((line, message))
        out.append(SourceError(file, line, message))
    return out
