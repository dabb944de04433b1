"""YAML campaign files, read safely and kept with their node tree for line numbers.

:func:`read_yaml` parses with a safe loader that drops YAML 1.1's base-60 numbers
(``aspect_ratio: 16:9`` stays a string). Any problem, including the parser's own failures
on hostile input, raises :class:`~runner.errors.ManifestError` naming the file and, when
the parser knows it, the line. :meth:`YamlDoc.where` turns a key path into the place a
message names: ``campaign.yaml:14: jobs[3].aspect_ratio``.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from runner.errors import ManifestError
from runner.messages import KeyPath, format_path, show

try:  # libyaml is much faster on big campaigns; the pure-Python parser behaves the same
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

__all__ = ["YamlDoc", "read_yaml"]


class _Loader(_BaseLoader):
    """Safe YAML, minus YAML 1.1's base-60 numbers: ``aspect_ratio: 16:9`` stays a string."""


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
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{display}:{mark.line + 1}" if mark else display
        raise ManifestError(f"not valid YAML: {exc.problem or exc.context}", where) from None
    except Exception as exc:  # the parser's own failures on hostile input (bad !!int, depth)
        raise ManifestError(f"not valid YAML: {show(exc)}", display) from None
    finally:
        loader.dispose()
    return YamlDoc(display, node), data
