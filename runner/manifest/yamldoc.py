"""YAML campaign files, read safely and kept with their node tree for line numbers.

:func:`read_yaml` parses with a safe loader that drops YAML 1.1's base-60 numbers
(``aspect_ratio: 16:9`` stays a string). Any problem, including the parser's own failures
on hostile input, raises :class:`~runner.errors.ManifestError` naming the file and, when
the parser knows it, the line. :meth:`YamlDoc.where` turns a key path into the place a
message names: ``campaign.yaml:14: jobs[3].aspect_ratio``.

A key given twice in one mapping (two ``jobs:`` lists, a job with two ``prompt:`` lines)
is an error at the second one, naming its key path and the first one's line: YAML
loaders otherwise keep the last silently. Keys brought in by a merge key (``<<: *base``)
may be overridden; that is what merging is for.

Owns: reading YAML and placing keys. Must not know: which keys are allowed.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from runner.errors import ManifestError

from .messages import KeyPath, format_path, show

try:  # libyaml is much faster on big campaigns; the pure-Python parser behaves the same
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

__all__ = ["YamlDoc", "read_yaml"]

# Called directly rather than through super(): this is the per-mapping hot path.
_flatten = yaml.constructor.SafeConstructor.flatten_mapping
_construct = yaml.constructor.BaseConstructor.construct_mapping


class _DuplicateKey(Exception):
    """A mapping node holds one key twice (raised by the loader, located by read_yaml)."""

    def __init__(self, mapping: yaml.MappingNode, key: object, first: yaml.Node, second: yaml.Node):
        super().__init__(key)
        self.mapping, self.key, self.first, self.second = mapping, key, first, second


class _Loader(_BaseLoader):
    """Safe YAML, minus YAML 1.1's base-60 numbers (``aspect_ratio: 16:9`` stays a string),
    refusing a key given twice in one mapping."""

    def __init__(self, stream: bytes) -> None:
        super().__init__(stream)
        #: the key/value pairs written in a mapping that merged others, by id of its node
        #: (kept only for those: the common mapping costs nothing)
        self._written: dict[int, list[tuple[yaml.Node, yaml.Node]]] = {}

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # Merging deletes the merge keys from the written list in place, then puts a new
        # list (merged pairs + written ones) in its place, after which an override cannot
        # be told from a repeat: keep the written list of the first flattening that merged.
        written = node.value
        _flatten(self, node)
        if node.value is not written and id(node) not in self._written:
            self._written[id(node)] = written

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[object, object]:
        if not isinstance(node, yaml.MappingNode):
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"expected a mapping, but found a {getattr(node, 'id', 'node')}",
                node.start_mark,
            )
        # What SafeConstructor.construct_mapping does, minus a layer of calls.
        self.flatten_mapping(node)
        mapping: dict[object, object] = _construct(self, node, deep=deep)
        # Fast path: as many keys as pairs means no key came twice, written or merged.
        if len(mapping) != len(node.value):
            self._refuse_repeats(node, deep)
        return mapping

    def _refuse_repeats(self, node: yaml.MappingNode, deep: bool) -> None:
        """Raise _DuplicateKey for the first key written twice in ``node``, if any (a
        merged key overridden is not one)."""
        seen: dict[object, yaml.Node] = {}
        for key_node, _ in self._written.get(id(node)) or node.value:
            key = self.construct_object(key_node, deep=deep)  # cached: no second build
            first = seen.setdefault(key, key_node)
            if first is not key_node:
                raise _DuplicateKey(node, key, first, key_node)


def _without_base60() -> None:
    int_tag, float_tag = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
    _Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in (int_tag, float_tag)]
        for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
    }
    int_rx = r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"
    float_rx = (
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    )
    _Loader.add_implicit_resolver(float_tag, re.compile(float_rx), list("-+0123456789."))
    _Loader.add_implicit_resolver(int_tag, re.compile(int_rx), list("-+0123456789"))


_without_base60()


class YamlDoc:
    """A parsed YAML file: its name as the user gave it and its node tree, for line numbers.

    ``root`` is None for a document without YAML (a ``.jsonl`` job list, an empty file):
    places then name the file alone.
    """

    def __init__(self, display: str, root: yaml.Node | None) -> None:
        self.display = display
        self.root = root

    def where(self, path: KeyPath = ()) -> str:
        """``campaign.yaml:14: jobs[3].aspect_ratio``: the deepest line the path reaches."""
        node, line = self.root, None
        if node is not None:
            line = node.start_mark.line + 1
        for part in path:
            if isinstance(node, yaml.MappingNode):
                pair = next((kv for kv in node.value if kv[0].value == str(part)), None)
                if pair is None:
                    break
                line, node = pair[0].start_mark.line + 1, pair[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if not 0 <= part < len(node.value):
                    break
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        head = f"{self.display}:{line}" if line else self.display
        return f"{head}: {format_path(path)}" if path else head


def read_yaml(source: Path, display: str) -> tuple[YamlDoc, object]:
    """The document and its data; ``display`` is the file's name as messages give it."""
    try:
        raw = source.read_bytes()
    except OSError as exc:
        raise ManifestError(f"cannot read the manifest: {exc.strerror or exc}", display) from None
    loader = _Loader(raw)
    node: yaml.Node | None = None
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except _DuplicateKey as exc:
        raise _duplicate_error(exc, node, display) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{display}:{mark.line + 1}" if mark else display
        raise ManifestError(f"not valid YAML: {exc.problem or exc.context}", where) from None
    except Exception as exc:  # the parser's own failures on hostile input (bad !!int, depth)
        raise ManifestError(f"not valid YAML: {show(exc)}", display) from None
    finally:
        loader.dispose()
    return YamlDoc(display, node), data


def _duplicate_error(exc: _DuplicateKey, root: yaml.Node | None, display: str) -> ManifestError:
    """``campaign.yaml:9: jobs[0].prompt: 'prompt' is given twice ...`` for a repeated key."""
    key = exc.key if isinstance(exc.key, str) else show(exc.key)
    path = (*(_path_to(root, exc.mapping) or ()), key)
    a, b = exc.first.start_mark, exc.second.start_mark
    if a.line != b.line:
        places = f"lines {a.line + 1} and {b.line + 1}"
    else:  # a flow mapping: {prompt: a, prompt: b}
        places = f"line {a.line + 1}, columns {a.column + 1} and {b.column + 1}"
    spelt = ""
    if isinstance(exc.first.value, str) and exc.first.value != exc.second.value:
        spelt = f", written {exc.first.value!r} and {exc.second.value!r}"
    return ManifestError(
        f"{show(exc.key)} is given twice in the same mapping ({places}{spelt}); a YAML reader "
        "would keep only the last, silently. Delete one, or merge the two into one",
        f"{display}:{b.line + 1}: {format_path(path)}",
    )


def _path_to(root: yaml.Node | None, target: yaml.Node) -> KeyPath | None:
    """The key path from ``root`` to the node ``target`` (first found), None if unreachable.

    Iterative with a visited set: aliases can share nodes and the tree can be deep."""
    stack: list[tuple[yaml.Node, KeyPath]] = [(root, ())] if root is not None else []
    visited: set[int] = set()
    while stack:
        node, path = stack.pop()
        if node is target:
            return path
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key_node, value in reversed(node.value):
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                stack.append((value, (*path, key)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*path, i)) for i, item in reversed(list(enumerate(node.value))))
    return None
