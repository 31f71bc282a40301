"""Operators' YAML files -> netd/v1 objects, with every problem named by file, document, field and line.

PyYAML composes each document into nodes that keep their marks (line and column); the values are
constructed from the same nodes, so a field path from the schema (pydantic's ``loc``) leads back to
the line it came from. A syntax error ends its file (the error has the line); a duplicate key is
refused (YAML says keys are unique; PyYAML would silently keep the last). All files are read and
checked before anything is returned, so a caller applies all or nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from netd.errors import NetdError
from netd.model.specs import Issue, SpecObject, check_objects, object_key, parse_object


@dataclass(frozen=True)
class Located:
    """An Issue with the file and line it came from."""

    file: str
    line: int | None  # 1-based
    issue: Issue

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        i = self.issue
        doc = ""
        if i.index is not None:
            label = " ".join(x for x in (i.kind, i.name) if x)
            doc = f" document {i.index + 1}" + (f" ({label})" if label else "") + ":"
        field = f" {i.field}:" if i.path else ""
        return f"{where}:{doc}{field} {i.message}"


class SpecFileError(NetdError):
    """One or more problems in the files; nothing was applied."""

    def __init__(self, problems: Sequence[Located]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class Document:
    file: str
    index: int  # 0-based within its file
    node: yaml.Node
    value: Any

    def line_of(self, path: Iterable[str | int]) -> int:
        """The line of the deepest node on ``path`` (1-based): the field itself, or the mapping
        that lacks it."""
        node = self.node
        for part in path:
            child = _child(node, part)
            if child is None:
                break
            node = child
        return int(node.start_mark.line) + 1


def _child(node: yaml.Node, part: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return node.value[part]
    return None


def _duplicate_keys(node: yaml.Node, path: tuple[str | int, ...] = (),
                    seen_nodes: set[int] | None = None) -> list[tuple[tuple[str | int, ...], int]]:
    """Keys twice in one mapping, with their path and line. Each node once: an alias is the node it
    names, and an alias inside its own anchor (``&m {labels: *m}``) would recurse for ever."""
    out: list[tuple[tuple[str | int, ...], int]] = []
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:
        return out
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key)
            if name in seen:
                out.append(((*path, name), int(key.start_mark.line) + 1))
            seen.add(name)
            out += _duplicate_keys(value, (*path, name), seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out += _duplicate_keys(item, (*path, i), seen_nodes)
    return out


def read_documents(path: str, text: str | None = None) -> tuple[list[Document], list[Located]]:
    """The documents of one file, or the problems that stop it (a syntax error, duplicate keys)."""
    try:
        if text is None:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        return [], [Located(path, None, Issue(None, (), f"cannot read: {exc}"))]
    docs: list[Document] = []
    problems: list[Located] = []
    try:
        for index, node in enumerate(n for n in yaml.compose_all(text, Loader=yaml.SafeLoader)):
            if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"):
                continue  # an empty document: a trailing `---`, or comments only (kubectl skips them too)
            for key_path, line in _duplicate_keys(node):
                problems.append(Located(path, line, Issue(index, key_path, "duplicate key (each may appear once)")))
            loader = yaml.SafeLoader("")
            docs.append(Document(path, index, node, loader.construct_document(node)))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        reason = getattr(exc, "problem", None) or str(exc)
        return [], [Located(path, int(mark.line) + 1 if mark else None,
                            Issue(None, (), f"not valid YAML: {reason}"))]
    return docs, problems


def load_objects(paths: Sequence[str], stored: Iterable[SpecObject],
                 cluster_network: ipaddress.IPv4Network | None = None) -> list[SpecObject]:
    """Every object of every file, validated whole (schema, then the rules between objects over
    what an apply would leave of ``stored``); SpecFileError lists every problem of every file."""
    problems: list[Located] = []
    parsed: list[tuple[Document, SpecObject]] = []
    for path in paths:
        docs, trouble = read_documents(path)
        problems += trouble
        for doc in docs:
            obj, issues = parse_object(doc.value, doc.index)
            problems += [Located(path, doc.line_of(i.path), i) for i in issues]
            if obj is not None:
                parsed.append((doc, obj))
    # check_objects numbers the documents of all files together: map each number back
    for issue in check_objects(list(enumerate(obj for _, obj in parsed)), stored, cluster_network):
        if issue.index is None:
            problems.append(Located("", None, issue))
            continue
        doc, obj = parsed[issue.index]
        message = issue.message
        if issue.related is not None:
            first = parsed[issue.related][0]
            message += f" (first in {first.file} document {first.index + 1})"
        local = Issue(doc.index, issue.path, message, *object_key(obj))
        problems.append(Located(doc.file, doc.line_of(issue.path), local))
    if problems:
        raise SpecFileError(sorted(problems, key=lambda p: (p.file, p.line or 0, str(p))))
    return [obj for _, obj in parsed]
