"""Intent patterns: compiled with RE2 (linear-time, no backtracking), matched in one pass.

Each intent's own pattern (its keywords as whole words, or its regexes) is the definition
of a match. Running every pattern over the task costs one search per intent, so an
``IntentMatcher`` first screens the task with an ``re2.Set`` of looser patterns (one pass
for all intents, however many) and then confirms candidates with their own pattern, in
precedence order. Screening never decides a match; it only rules intents out.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import re2

from rolegate.policy.understanding_schema import Intent


class IntentPattern(Protocol):
    """A compiled RE2 pattern: matching time is linear in the task's length."""

    def search(self, text: str | bytes) -> object | None: ...


def re2_options() -> Any:
    """RE2 options for intent patterns: case-insensitive and quiet.

    RE2's default ``max_mem`` (8 MiB) bounds what compiling a pattern may use.
    """
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False  # a bad pattern is reported by `check`, not on stderr
    return options


def compile_re2(pattern: str) -> IntentPattern:
    """Compile ``pattern`` with RE2 (raises ``re2.error``); matching never backtracks."""
    compiled: IntentPattern = re2.compile(pattern, re2_options())
    return compiled


def combined_regex(regexes: Sequence[str]) -> str:
    return "|".join(f"(?:{rx})" for rx in regexes)


# Python's \b is Unicode-aware and RE2's is ASCII-only, so a keyword's edges are
# spelled out: a word character is a letter, a digit or '_' in any script.
_WORD = r"[\pL\pN_]"
_NOT_WORD = r"[^\pL\pN_]"


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char == "_"


_VOWELS = frozenset("aeiou")
_SPELLINGS = (("ize", "i[sz]e"), ("ise", "i[sz]e"), ("yze", "y[sz]e"), ("yse", "y[sz]e"))


def _inflected(word: str) -> tuple[str, str]:
    """(regex, literal stem) for an English word and its inflections and British spellings:
    plural and verb forms (s, es, ed, ing, er, ers; y -> ies, ied; a doubled final
    consonant: scan -> scanned), and -ize/-yze as -ise/-yse. The stem is a literal that
    every form contains, for the screening set."""
    lower = word.lower()
    spelled = ""
    for suffix, either in _SPELLINGS:
        if lower.endswith(suffix) and len(lower) > len(suffix) + 2:
            word, spelled = word[: -len(suffix)], either
            break
    if spelled:
        stem = word + spelled[0]
        return re2.escape(word) + spelled[:-1] + "(?:e|es|ed|ing|er|ers|ation|ations)", stem
    if lower.endswith("e"):
        return re2.escape(word[:-1]) + "(?:e|es|ed|ing|er|ers)", word[:-1]
    if lower.endswith("y") and len(lower) > 2 and lower[-2] not in _VOWELS:
        return re2.escape(word[:-1]) + "(?:y|ies|ied|ying)", word[:-1]
    doubled = ""
    if (
        len(lower) >= 3
        and lower[-1] not in _VOWELS | {"w", "x", "y"}
        and lower[-2] in _VOWELS
        and lower[-3] not in _VOWELS
    ):
        doubled = "|" + re2.escape(word[-1]) + "(?:ed|ing|er|ers)"
    return re2.escape(word) + f"(?:s|es|ed|ing|er|ers{doubled})?", word


def _keyword_parts(keyword: str) -> tuple[str, str]:
    """(regex body, screening literal): the last word of an all-letters keyword is
    inflected; any other keyword is matched as written."""
    head, _, last = keyword.rpartition(" ")
    if len(last) >= 3 and last.isascii() and last.isalpha():
        body, stem = _inflected(last)
        prefix = head + " " if head else ""
        return re2.escape(prefix) + body, prefix + stem
    return re2.escape(keyword), keyword


def _keyword_regex(keyword: str) -> str:
    """``keyword`` as a whole word (with its inflections): what ``\\b keyword \\b`` means in
    Python's re."""
    if not keyword:
        return r"\b"
    before = f"(?:^|{_NOT_WORD})" if _is_word_char(keyword[0]) else _WORD
    after = f"(?:$|{_NOT_WORD})" if _is_word_char(keyword[-1]) else _WORD
    return before + _keyword_parts(keyword)[0] + after


def intent_pattern(intent: Intent) -> IntentPattern | None:
    """The intent's own pattern: its keywords as whole words, or any of its regexes."""
    parts = [_keyword_regex(k) for k in intent.match.keywords]
    if intent.match.regex:
        parts.append(combined_regex(intent.match.regex))
    return compile_re2("|".join(parts)) if parts else None


def _screens(intent: Intent) -> list[str]:
    """Looser patterns, one per keyword or regex: any match of the intent's own pattern
    contains a match of one of them (a whole word contains the bare keyword).

    Bare literals keep the set small and its DFA states few: RE2 merges literals with a
    common prefix, while the word-edge classes would add thousands of instructions per
    keyword and a thread per intent to every state.
    """
    stems = [str(re2.escape(_keyword_parts(k)[1])) for k in intent.match.keywords]
    return stems + list(intent.match.regex)


class _Group:
    """Intents, consecutive in precedence, screened by one set (None: each is tried).

    ``owners[i]`` is the intent (a position) that the set's pattern ``i`` screens for.
    """

    __slots__ = ("owners", "positions", "screen")

    def __init__(self, positions: tuple[int, ...], owners: tuple[int, ...], screen: Any) -> None:
        self.positions = positions
        self.owners = owners
        self.screen = screen


def _compile_screen(regexes: Sequence[str]) -> Any:
    """An RE2 set of ``regexes`` plus an empty pattern, or None if RE2 refuses it.

    The empty pattern matches every text, so a result without it means the set's DFA
    gave up (the Python binding reports that as no match); the caller then tries every
    intent instead of trusting the empty answer.
    """
    screen = re2.Set.SearchSet(re2_options())
    try:
        for regex in regexes:
            screen.Add(regex)
        screen.Add("")
        screen.Compile()
    except re2.error:
        return None
    return screen


def _groups(entries: Sequence[tuple[int, list[str]]]) -> list[_Group]:
    """One set for all, or (when RE2's memory bound refuses it) halves, recursively."""
    owners = tuple(position for position, screens in entries for _ in screens)
    screen = _compile_screen([regex for _, screens in entries for regex in screens])
    if screen is not None or len(entries) == 1:
        return [_Group(tuple(position for position, _ in entries), owners, screen)]
    half = len(entries) // 2
    return [*_groups(entries[:half]), *_groups(entries[half:])]


class IntentMatcher:
    """Finds the first intent, in a fixed precedence order, whose pattern matches a task."""

    __slots__ = ("_groups", "_intents", "_patterns")

    def __init__(self, intents: Sequence[tuple[Intent, IntentPattern | None]]) -> None:
        """``intents`` in precedence order; results are positions in that sequence."""
        self._intents = tuple(intents)
        self._patterns = tuple(pattern for _, pattern in intents)
        entries = [(i, _screens(it)) for i, (it, p) in enumerate(intents) if p is not None]
        self._groups: list[_Group] = _groups(entries) if entries else []

    def __reduce__(self) -> tuple[Any, ...]:
        # RE2 sets cannot be pickled; rebuilding them keeps a Policy picklable, as it was.
        return (IntentMatcher, (self._intents,))

    def first(self, task: str) -> int | None:
        """The position of the first intent whose own pattern matches ``task``, or None."""
        for position in self._matches(task):
            return position
        return None

    def all(self, task: str) -> list[int]:
        """The positions of every intent whose own pattern matches ``task``, in order."""
        return list(self._matches(task))

    def _matches(self, task: str) -> Iterator[int]:
        if not self._groups:
            return
        # Encoded once (as RE2 would for each search). A lone surrogate (a CLI argument that
        # was not UTF-8, a broken client) is read as "?", never raised on.
        text = task.encode("utf-8", "replace")
        for group in self._groups:
            hits = group.screen.Match(text) if group.screen is not None else None
            if hits is None:  # no set, or its DFA gave up: try each intent
                candidates: Sequence[int] = group.positions
            else:
                owners = group.owners
                # The last index is the empty pattern, which every text matches.
                candidates = sorted({owners[i] for i in hits if i < len(owners)})
            for position in candidates:
                pattern = self._patterns[position]
                assert pattern is not None
                if pattern.search(text) is not None:
                    yield position
