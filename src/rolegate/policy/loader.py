"""Reading a policy file: parse (YAML, JSON or TOML), validate, check, compile.

A policy file is untrusted input, so reading it is bounded: at most
``MAX_POLICY_BYTES`` bytes from a regular file (never a device or a FIFO), at
most ``MAX_DEPTH`` levels of nesting, at most ``MAX_VALUES`` values once YAML
aliases are expanded, and no key twice in one mapping. Every refusal is a
``PolicyLoadError`` with one sentence, never a traceback.

Other untrusted files (eval suites) are read the same way with their own ``Limits``.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent, MappingStartEvent, SequenceStartEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from rolegate.errors import PolicyInvalidError, PolicyLoadError, PolicyProblem
from rolegate.policy.checks import check_document
from rolegate.policy.compiled import Policy
from rolegate.policy.schema import PolicyDocument

DEFAULT_POLICY_RESOURCE = "default_policy.yaml"

MAX_POLICY_BYTES = 1024 * 1024
"""A policy file is at most 1 MiB; real ones are a few KiB."""
MAX_DEPTH = 64
"""Deepest nesting of mappings and lists; the format itself needs fewer than 10."""
MAX_VALUES = 20_000
"""Most values (scalars, lists, mappings) a policy may hold, YAML aliases expanded.

The richest example policy holds about 800. The cap bounds the time spent building
and validating a hostile file: without it, 1 MiB of small YAML values takes seconds.
"""


@dataclass(frozen=True)
class Limits:
    """What a file is called in refusals, and how large it may be; a policy's by default."""

    what: str = "policy"
    max_bytes: int = MAX_POLICY_BYTES
    max_values: int = MAX_VALUES


POLICY_LIMITS = Limits()

_BOOL_TAG = "tag:yaml.org,2002:bool"
_SKIP_TAGS = ("tag:yaml.org,2002:merge", "tag:yaml.org,2002:value")
_KEY_SHOWN = 60


class _PolicyYaml(Composer, SafeConstructor, Resolver):
    """Composing and constructing, hardened for untrusted policy files.

    - Only true/false (in any of YAML 1.2's three spellings) are booleans, so
      ``on:``, ``yes``, ``no`` and ``off`` stay strings (YAML 1.1 read them as booleans).
    - A key repeated in one mapping is an error, at any depth, naming both lines.
    - Nesting deeper than ``MAX_DEPTH`` is an error raised while composing,
      long before Python's recursion limit.
    - More than ``_max_values`` values (``MAX_VALUES`` unless ``Limits`` say otherwise),
      counting each alias as everything it stands for, is an error raised as soon as
      the count passes the limit and before anything is built ("billion laughs"); so
      is an alias inside the node it names.

    Mixed into an event source below: libyaml's parser when PyYAML has it,
    else PyYAML's own.
    """

    def _init_guards(self) -> None:
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._depth = 0
        self._values = 0
        self._weights: dict[int, int] = {}  # id(node) -> values it stands for
        self._dup_checked: set[int] = set()
        self._max_values = MAX_VALUES

    def _peek(self) -> Any:
        return self.peek_event()  # type: ignore[attr-defined]

    def _count(self, values: int, mark: Any) -> None:
        self._values += values
        if self._values > self._max_values:
            raise ComposerError(
                None,
                None,
                f"too many values (more than {self._max_values:,}, aliases expanded)",
                mark,
            )

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self._peek()
        mark: Any = event.start_mark  # PyYAML's or libyaml's Mark
        if isinstance(event, AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:
                if id(target) not in self._weights:
                    raise ComposerError(
                        None,
                        None,
                        f"alias *{event.anchor} is inside the node it names",
                        mark,
                    )
                self._count(self._weights[id(target)], mark)
            return super().compose_node(parent, index)
        self._count(1, mark)
        nested = isinstance(event, SequenceStartEvent | MappingStartEvent)
        if nested:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise ComposerError(
                    None,
                    None,
                    f"nested too deeply (more than {MAX_DEPTH} levels)",
                    mark,
                )
        try:
            node = super().compose_node(parent, index)
        finally:
            if nested:
                self._depth -= 1
        weight = 1
        if isinstance(node, SequenceNode):
            weight += sum(self._weights[id(child)] for child in node.value)
        elif isinstance(node, MappingNode):
            weight += sum(self._weights[id(k)] + self._weights[id(v)] for k, v in node.value)
        if node is not None:
            self._weights[id(node)] = weight
        return node

    def flatten_mapping(self, node: MappingNode) -> None:
        # Every mapping passes through here before merge keys (<<) are applied, so
        # the explicit keys are checked here; keys a merge brings in may be overridden.
        if id(node) not in self._dup_checked:
            self._dup_checked.add(id(node))
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag in _SKIP_TAGS or not isinstance(key_node, ScalarNode):
                    continue
                key = self.construct_object(key_node)
                try:
                    seen = first_line.get(key)
                except TypeError:
                    continue
                if seen is not None:
                    shown = repr(key) if len(repr(key)) <= _KEY_SHOWN else "a long key"
                    raise ConstructorError(
                        None,
                        None,
                        f"duplicate key {shown} (first on line {seen})",
                        key_node.start_mark,
                    )
                first_line[key] = key_node.start_mark.line + 1
        super().flatten_mapping(node)


# YAML 1.2 booleans: drop the YAML 1.1 resolver (yes/no/on/off/y/n), keep true/false.
_PolicyYaml.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
    for first, resolvers in Resolver.yaml_implicit_resolvers.items()
}
_PolicyYaml.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


class _PurePolicyLoader(Reader, Scanner, Parser, _PolicyYaml):
    """Events from PyYAML's pure-Python parser."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        self._init_guards()


_LOADER: Callable[[str], Any] = _PurePolicyLoader
if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _FastPolicyLoader(CParser, _PolicyYaml):
        """Events from libyaml (a few times faster); composing stays in Python, guarded."""

        check_node = Composer.check_node
        get_node = Composer.get_node
        get_single_node = Composer.get_single_node

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            self._init_guards()

    _LOADER = _FastPolicyLoader


class _DuplicateJsonKey(ValueError):
    pass


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            shown = repr(key) if len(key) <= _KEY_SHOWN else "a long key"
            raise _DuplicateJsonKey(f"duplicate key {shown}")
        out[key] = value
    return out


def _parse_yaml(text: str, max_values: int) -> Any:
    loader = _LOADER(text)
    loader._max_values = max_values
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _too_large(source: str, limits: Limits) -> PolicyLoadError:
    return PolicyLoadError(
        f"{source}: too large: a {limits.what} file may be at most "
        f"{limits.max_bytes >> 20} MiB ({limits.max_bytes} bytes)"
    )


def _too_deep(source: str) -> PolicyLoadError:
    return PolicyLoadError(f"{source}: nested too deeply (more than {MAX_DEPTH} levels)")


def _check_shape(data: Any, source: str, max_values: int) -> None:
    """Refuse nesting deeper than MAX_DEPTH or more than ``max_values`` values (no recursion)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > max_values:
            raise PolicyLoadError(f"{source}: too many values (more than {max_values:,})")
        if isinstance(value, dict):
            children: Any = [*value.keys(), *value.values()]
        elif isinstance(value, list | tuple):
            children = value
        else:
            continue
        if depth > MAX_DEPTH:
            raise _too_deep(source)
        stack.extend((child, depth + 1) for child in children)


def parse_text(text: str, fmt: str, source: str, limits: Limits = POLICY_LIMITS) -> Any:
    """Parse ``text`` as ``fmt`` ('yaml', 'json' or 'toml'), within the limits above."""
    if len(text) > limits.max_bytes or (
        len(text.encode("utf-8", "surrogatepass")) > limits.max_bytes
    ):
        raise _too_large(source, limits)
    try:
        if fmt == "json":
            data = json.loads(text, object_pairs_hook=_json_object)
        elif fmt == "toml":
            data = tomllib.loads(text)
        elif fmt == "yaml":
            data = _parse_yaml(text, limits.max_values)
        else:
            raise PolicyLoadError(
                f"{source}: unknown format {fmt!r}; use .yaml, .yml, .json or .toml"
            )
    except RecursionError:
        raise _too_deep(source) from None
    except json.JSONDecodeError as exc:
        raise PolicyLoadError(
            f"{source}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}"
        ) from None
    except _DuplicateJsonKey as exc:
        raise PolicyLoadError(f"{source}: invalid JSON: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyLoadError(f"{source}: invalid TOML: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyLoadError(f"{source}{where}: invalid YAML: {problem}") from None
    _check_shape(data, source, limits.max_values)
    return data


def _format_for(path: Path) -> str:
    suffix = path.suffix.lower()
    return {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".toml": "toml"}.get(suffix, suffix)


def _location(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def validate_data(data: Any, source: str) -> tuple[PolicyDocument, list[PolicyProblem]]:
    """Validate parsed data; raise with every error at once, return warnings."""
    if not isinstance(data, dict):
        raise PolicyInvalidError(
            source, [PolicyProblem("(top level)", "a policy is a mapping with 'version: 1'")]
        )
    try:
        doc = PolicyDocument.model_validate(data)
    except ValidationError as exc:
        problems = [
            PolicyProblem(_location(tuple(err["loc"])), _message(err))
            for err in exc.errors(include_input=False, include_url=False)
        ]
        raise PolicyInvalidError(source, problems) from None
    problems = check_document(doc)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise PolicyInvalidError(source, errors)
    return doc, problems


def _message(err: Any) -> str:
    # Only pydantic's 'msg' is shown: it never contains the input value, which
    # may be a secret pasted into the wrong field.
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key (not part of the policy format; check the spelling)"
    msg = str(err.get("msg", "invalid"))
    return msg.removeprefix("Value error, ")


def load_policy_text(text: str, fmt: str, source: str) -> Policy:
    data = parse_text(text, fmt, source)
    doc, warnings = validate_data(data, source)
    return Policy(doc, source=source, warnings=warnings)


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def read_policy_file(path: Path, limits: Limits = POLICY_LIMITS) -> str:
    """The text of a regular file of at most ``limits.max_bytes``; never blocks on a FIFO."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise PolicyLoadError(f"{path}: no such file") from None
    except OSError as exc:
        raise PolicyLoadError(f"{path}: cannot open: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a file")
            raise PolicyLoadError(
                f"{path}: not a regular file ({kind}); a {limits.what} must be a regular file"
            )
        chunks: list[bytes] = []
        left = limits.max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise PolicyLoadError(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if left <= 0:
        raise _too_large(str(path), limits)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyLoadError(
            f"{path}: cannot read: not UTF-8 text (bad byte at offset {exc.start})"
        ) from None


def load_policy(path: str | Path) -> Policy:
    """Load, validate and compile the policy at ``path``; raise PolicyError if unusable."""
    p = Path(path)
    return load_policy_text(read_policy_file(p), _format_for(p), str(p))


def default_policy_text() -> str:
    return resources.files("rolegate.policy").joinpath(DEFAULT_POLICY_RESOURCE).read_text("utf-8")


def load_default_policy() -> Policy:
    """The embedded policy: one local Ollama, used when no policy file is given."""
    return load_policy_text(default_policy_text(), "yaml", "<embedded default policy>")
