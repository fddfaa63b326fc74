"""Which configured regular expressions may run on text from the network: only linear-time shapes.

Python's `re` backtracks, so a pattern such as `^h\\s*&?\\s*e$` takes time
quadratic in the text (the two `\\s*` can split a run of spaces in every way),
and `(a+)+` exponential. Operators configure stain patterns, attackers choose
the stain text, so a pattern is checked once, where it is configured, and
refused when its shape lets backtracking grow with the text:

- a quantifier that repeats more than once (`*`, `+`, `{m,n}`) applies to a
  fixed-length piece with no quantifier or alternation inside (no `(a+)+`,
  `(a|ab)*`, `(ab?)*`);
- two such quantifiers never meet over shared characters: between them lies
  a piece that none of the characters they share can match (`\\s*x\\s*` is
  fine, `\\s*&?\\s*` and `.*x.*` are not);
- no backreferences or lookarounds (they are not regular).

Such a pattern runs in time linear in the text at each starting position.
The checker is conservative (it refuses some harmless patterns, never admits
a backtracking one it can see), and callers still bound the text's length.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

_parser: Any = importlib.import_module("re._parser")  # the parser `re` itself uses

MAX_PATTERN_CHARS = 200
# Characters the set comparisons are evaluated on; each pattern adds its own literals and range ends.
_SAMPLE = frozenset(
    [chr(c) for c in range(0x250)]
    + [chr(c) for c in range(0x2000, 0x200B)]  # Unicode spaces, for \s
    + list("\u1680\u2028\u2029\u202f\u205f\u3000\u0660\u0966\uff10\u0391\u03b1\u0430\u4e00\u0130\u212a")
)
_REPEATS = {"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"}
_UNSUPPORTED = {"GROUPREF", "GROUPREF_EXISTS", "GROUPREF_IGNORE", "ASSERT", "ASSERT_NOT"}


class UnsafePattern(ValueError):
    """A pattern whose matching time could grow faster than its text; the message says why."""


@dataclass
class _Shape:
    """What the checker knows of a piece of pattern: can it match nothing, which characters it may
    consume, and the character sets of repeated quantifiers live at its start and at its end."""

    nullable: bool = True
    chars: frozenset[str] = frozenset()
    heads: list[frozenset[str]] = field(default_factory=list)
    tails: list[frozenset[str]] = field(default_factory=list)
    fixed: bool = True  # matches strings of one length only, with no quantifier or alternation


def check_pattern(pattern: str) -> None:
    """Raise `UnsafePattern` unless `pattern` compiles and has a linear-time shape (see module doc)."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise UnsafePattern(f"the pattern is longer than {MAX_PATTERN_CHARS} characters")
    try:
        parsed = _parser.parse(pattern, re.IGNORECASE)
    except re.error as exc:
        raise UnsafePattern(f"not a regular expression ({exc})") from None
    _Checker(_sample_for(parsed)).sequence(list(parsed))


@lru_cache(maxsize=256)
def compile_safe(pattern: str) -> re.Pattern[str]:
    """The compiled, case-insensitive pattern once `check_pattern` accepts it."""
    check_pattern(pattern)
    return re.compile(pattern, re.IGNORECASE)


def _sample_for(parsed: Any) -> frozenset[str]:
    """The sample plus each literal and range end of the pattern (two ranges overlap iff one holds
    an end of the other), with their case variants."""
    extra: set[str] = set()

    def walk(items: Any) -> None:
        for op, av in items:
            name = str(op)
            if name in ("LITERAL", "NOT_LITERAL"):
                extra.add(chr(av))
            elif name == "RANGE":
                extra.update(chr(c) for c in (av[0], av[1], max(av[0] - 1, 0), min(av[1] + 1, 0x10FFFF)))
            elif name == "IN":
                walk(av)
            elif name == "SUBPATTERN":
                walk(av[3])
            elif name == "BRANCH":
                for branch in av[1]:
                    walk(branch)
            elif name in _REPEATS:
                walk(av[2])
            elif name == "ATOMIC_GROUP":
                walk(av)

    walk(parsed)
    variants = {v for c in extra for v in (c, c.lower(), c.upper()) if len(v) == 1}
    return _SAMPLE | variants


def _cases(x: str) -> list[str]:
    return [v for v in (x, x.lower(), x.upper()) if len(v) == 1]


def _same(x: str, c: str) -> bool:
    return x == c or x.lower() == c.lower() or x.upper() == c.upper()


def _in_category(x: str, category: str) -> bool:
    base = category.removeprefix("CATEGORY_").removeprefix("NOT_")
    test = {"DIGIT": x.isdecimal(), "SPACE": x.isspace(), "WORD": x.isalnum() or x == "_"}.get(base, True)
    return test != category.startswith("CATEGORY_NOT_")


class _Checker:
    def __init__(self, sample: frozenset[str]) -> None:
        self.sample = sample

    def sequence(self, items: list[Any]) -> _Shape:
        shape = _Shape()
        for item in items:
            shape = self._concat(shape, self.item(*item))
        return shape

    def item(self, op: Any, av: Any) -> _Shape:
        name = str(op)
        if name in _UNSUPPORTED:
            raise UnsafePattern("backreferences and lookarounds are not allowed")
        if name in ("LITERAL", "NOT_LITERAL", "ANY", "IN"):
            return _Shape(nullable=False, chars=self._chars(name, av))
        if name == "AT":
            return _Shape()
        if name == "SUBPATTERN":
            return self.sequence(list(av[3]))
        if name == "ATOMIC_GROUP":
            return self.sequence(list(av))
        if name == "BRANCH":
            shapes = [self.sequence(list(branch)) for branch in av[1]]
            return _Shape(
                nullable=any(s.nullable for s in shapes),
                chars=frozenset().union(*(s.chars for s in shapes)),
                heads=[h for s in shapes for h in s.heads],
                tails=[t for s in shapes for t in s.tails],
                fixed=False,
            )
        if name in _REPEATS:
            low, high, body = av
            inner = self.sequence(list(body))
            if high <= 1:
                return _Shape(True, inner.chars, inner.heads, inner.tails, fixed=False)
            if not inner.fixed or inner.nullable:
                raise UnsafePattern(
                    "a repeated group contains a quantifier or an alternation (nested quantifiers backtrack)"
                )
            if low == high:
                return _Shape(False, inner.chars, fixed=True)
            return _Shape(low == 0, inner.chars, [inner.chars], [inner.chars], fixed=False)
        raise UnsafePattern(f"the pattern uses an unsupported construct ({name.lower()})")

    def _chars(self, name: str, av: Any) -> frozenset[str]:
        if name == "ANY":
            return self.sample
        if name in ("LITERAL", "NOT_LITERAL"):
            hit = {x for x in self.sample if _same(x, chr(av))}
            return frozenset(hit if name == "LITERAL" else self.sample - hit)
        negate = False
        hit = set()
        for op, value in av:
            kind = str(op)
            if kind == "NEGATE":
                negate = True
            elif kind == "LITERAL":
                hit |= {x for x in self.sample if _same(x, chr(value))}
            elif kind == "RANGE":
                low, high = value
                hit |= {x for x in self.sample if any(low <= ord(v) <= high for v in _cases(x))}
            elif kind == "CATEGORY":
                hit |= {x for x in self.sample if _in_category(x, str(value))}
            else:
                hit |= self.sample  # anything else: assume it may match every character
        return frozenset(self.sample - hit if negate else hit)

    @staticmethod
    def _concat(left: _Shape, right: _Shape) -> _Shape:
        """`left` then `right`: refuse when a quantifier ending `left` meets one starting `right`
        over shared characters; keep a quantifier live across a piece it could itself have matched."""
        for tail in left.tails:
            for head in right.heads:
                if tail & head:
                    raise UnsafePattern(
                        "two quantifiers can match the same characters one after the other "
                        "(e.g. '\\s*&?\\s*'); put a required character between them"
                    )
        tails = right.tails + [t for t in left.tails if right.nullable or (right.chars & t)]
        heads = left.heads + [h for h in right.heads if left.nullable or (left.chars & h)]
        return _Shape(
            nullable=left.nullable and right.nullable,
            chars=left.chars | right.chars,
            heads=heads,
            tails=tails,
            fixed=left.fixed and right.fixed,
        )
