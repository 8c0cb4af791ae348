"""Strings that match a regular expression, for JSON Schema ``pattern`` (pure).

Client patterns are matched in linear time: every match is RE2's (the
``google-re2`` binding), so no pattern can make a search backtrack
exponentially. A pattern RE2 cannot compile is a :class:`PatternError`;
that includes lookarounds, back-references, atomic groups, possessive
quantifiers and conditional groups, which have no linear-time match.

To make a string, a small parser turns the pattern into a tree of literals,
character classes, sequences, alternations, repeats and groups; a walk of the
tree, steered by a :class:`Seed` and a wanted length range, emits a candidate;
the RE2 search then has the last word, so a candidate that does not match is
never returned. Each step of the walk spends the answer's CPU budget
(:func:`.limits.spend`).

Supported: literals and escapes (``\\n``, ``\\t``, ``\\xhh``, ``\\uhhhh``,
escaped metacharacters), ``.``, classes (``[a-z0-9_]``, ``[^...]``, ``\\d \\w
\\s`` and their negations, inside and outside classes), groups (capturing,
``(?:...)``, ``(?P<name>...)``, scoped flags ``(?i:...)``), alternation,
quantifiers (``* + ? {n} {n,} {n,m}`` and lazy forms; ``{,m}`` is a literal,
as in RE2 and ECMA-262), anchors (``^ $ \\A \\Z \\b \\B``; ``$`` only at
the very end, as in ECMA-262) and leading global flags (``(?i)``). Classes
such as ``\\d`` and ``\\w`` are ASCII, as RE2 matches them.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import re2

from airgap_proxy.fallback.limits import spend
from airgap_proxy.fallback.seed import Seed

MAX_PATTERN_LENGTH = 100_000
_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_PRINTABLE = _ALPHABET + " _-.,:;!?@#$%&*+=/~^()[]{}<>|'\"\\`"
_EXOTIC = "éßλжअ中😀\u00a0"
_CATEGORY_CHARS = {
    "d": "0123456789",
    "w": _ALPHABET + "_",
    "s": " \t\n",
    "D": "abcXYZ_-. ",
    "W": " -.,:!@",
    "S": _ALPHABET,
}
_ESCAPE_LITERALS = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a", "0": "\x00"}
_ANCHOR_ESCAPES = frozenset("bBAZ")
# Python escapes RE2 spells differently: \\uhhhh, \\Uhhhhhhhh and \\Z (the very end).
_RE2_SPELLING = re.compile(r"\\(?:u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})|(Z))|\\.", re.DOTALL)
_RE2_LIMITS = "lookarounds, back-references, atomic groups, possessive quantifiers or conditional groups"


class PatternError(ValueError):
    """The pattern is invalid, or uses a construct the sampler cannot produce."""


@dataclass(frozen=True, slots=True)
class _Node:
    lo: int
    hi: int | None


@dataclass(frozen=True, slots=True)
class _Lit(_Node):
    text: str


@dataclass(frozen=True, slots=True)
class _Class(_Node):
    """One character from a set, tested by the compiled class itself."""

    regex: re.Pattern[str]
    candidates: str


@dataclass(frozen=True, slots=True)
class _Empty(_Node):
    """Anchors and flags: they emit nothing."""


@dataclass(frozen=True, slots=True)
class _Seq(_Node):
    parts: tuple[_Node, ...]


@dataclass(frozen=True, slots=True)
class _Alt(_Node):
    options: tuple[_Node, ...]


@dataclass(frozen=True, slots=True)
class _Repeat(_Node):
    node: _Node
    min_count: int
    max_count: int | None


@dataclass(frozen=True, slots=True)
class _Group(_Node):
    node: _Node


def _add(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b


def _mul(a: int | None, k: int | None) -> int | None:
    if a == 0 or k == 0:
        return 0
    return None if a is None or k is None else a * k


def _literal(text: str) -> _Lit:
    return _Lit(len(text), len(text), text)


_EMPTY = _Empty(0, 0)


def _class(source: str, preferred: str, flags: int) -> _Class:
    regex = re.compile(source, flags)
    return _Class(1, 1, regex, preferred)


class _Parser:
    def __init__(self, text: str, flags: int):
        self.text = text
        self.i = 0
        self.flags = flags

    def parse(self) -> _Node:
        node = self.alternation()
        if self.i != len(self.text):
            raise PatternError("unbalanced parenthesis")
        return node

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.text[j] if j < len(self.text) else ""

    def alternation(self) -> _Node:
        options = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            options.append(self.sequence())
        if len(options) == 1:
            return options[0]
        his = [o.hi for o in options]
        hi = None if None in his else max(h for h in his if h is not None)
        return _Alt(min(o.lo for o in options), hi, tuple(options))

    def sequence(self) -> _Node:
        parts: list[_Node] = []
        while self.i < len(self.text) and self.peek() not in "|)":
            parts.append(self.quantified(self.atom()))
        if len(parts) == 1:
            return parts[0]
        lo = sum(p.lo for p in parts)
        hi: int | None = 0
        for p in parts:
            hi = _add(hi, p.hi)
        return _Seq(lo, hi, tuple(parts))

    def quantified(self, atom: _Node) -> _Node:
        c = self.peek()
        bounds: tuple[int, int | None] | None = None
        if c == "*":
            bounds = (0, None)
            self.i += 1
        elif c == "+":
            bounds = (1, None)
            self.i += 1
        elif c == "?":
            bounds = (0, 1)
            self.i += 1
        elif c == "{":
            match = re.compile(r"\{(\d+)(,?)(\d*)\}").match(self.text, self.i)
            if match is None:
                return atom
            self.i = match.end()
            lo = int(match.group(1) or 0)
            hi = int(match.group(3)) if match.group(3) else (None if match.group(2) else lo)
            bounds = (lo, hi)
        if bounds is None:
            return atom
        if self.peek() == "?":  # lazy: the same strings match
            self.i += 1
        lo, hi = bounds
        return _Repeat(atom.lo * lo, _mul(atom.hi, hi), atom, lo, hi)

    def atom(self) -> _Node:
        c = self.text[self.i]
        self.i += 1
        if c == "(":
            return self.group()
        if c == "[":
            return self.char_class()
        if c == ".":
            return _class("." if not self.flags & re.DOTALL else "(?s:.)", _ALPHABET, 0)
        if c in "^$":
            return _EMPTY
        if c == "\\":
            return self.escape()
        return _literal(c)

    def group(self) -> _Node:
        """A group; RE2 has already refused every construct but these (and their flags)."""
        if self.peek() == "?":
            self.i += 1
            c = self.peek()
            if c == ":":
                self.i += 1
            elif c == "P" and self.peek(1) == "<":
                self.i = self.text.index(">", self.i) + 1
            else:
                match = re.compile(r"[imsU]*(?:-[imsU]*)?([:)])").match(self.text, self.i)
                if match is None:
                    raise PatternError(f"unsupported group construct at offset {self.i - 2}")
                self.i = match.end()
                if match.group(1) == ")":
                    return _EMPTY
        inner = self.alternation()
        self.expect_close()
        return _Group(inner.lo, inner.hi, inner)

    def expect_close(self) -> None:
        if self.peek() != ")":
            raise PatternError("missing )")
        self.i += 1

    def escape(self) -> _Node:
        c = self.peek()
        self.i += 1
        if c in _CATEGORY_CHARS:
            return _class("\\" + c, _CATEGORY_CHARS[c], self.flags)
        if c in _ANCHOR_ESCAPES:
            return _EMPTY
        return _literal(self.escaped_char(c))

    def escaped_char(self, c: str) -> str:
        """The character an escape (after the backslash) stands for."""
        if c in _ESCAPE_LITERALS:
            if c == "0":
                match = re.compile(r"[0-7]{0,2}").match(self.text, self.i)
                assert match is not None
                self.i = match.end()
                return chr(int("0" + match.group(0), 8))
            return _ESCAPE_LITERALS[c]
        widths = {"x": 2, "u": 4, "U": 8}
        if c in widths:
            digits = self.text[self.i : self.i + widths[c]]
            self.i += widths[c]
            return chr(int(digits, 16))
        return c

    def char_class(self) -> _Node:
        start = self.i - 1
        negated = self.peek() == "^"
        if negated:
            self.i += 1
        preferred: list[str] = []
        first = True
        while True:
            if self.i >= len(self.text):
                raise PatternError("unterminated character class")
            c = self.text[self.i]
            self.i += 1
            if c == "]" and not first:
                break
            first = False
            if c == "\\":
                e = self.peek()
                self.i += 1
                if e in _CATEGORY_CHARS:
                    preferred.append(_CATEGORY_CHARS[e])
                    continue
                c = "\b" if e == "b" else self.escaped_char(e)
            if self.peek() == "-" and self.peek(1) not in ("]", ""):
                self.i += 1
                u = self.text[self.i]
                self.i += 1
                if u == "\\":
                    e = self.peek()
                    self.i += 1
                    u = "\b" if e == "b" else self.escaped_char(e)
                preferred.append(_range_sample(c, u))
            else:
                preferred.append(c)
        source = self.text[start : self.i]
        choices = _PRINTABLE if negated else "".join(preferred) + _PRINTABLE
        return _class(source, choices + _EXOTIC, self.flags)


def _range_sample(lo: str, hi: str) -> str:
    """A few characters of a range, printable ones first."""
    a, b = ord(lo), ord(hi)
    picks = [a, b, (a + b) // 2] + [x for x in range(a, min(b, a + 40) + 1)]
    return "".join(chr(x) for x in picks if a <= x <= b)


@dataclass(frozen=True, slots=True)
class _Compiled:
    regex: re2._Regexp
    tree: _Node

    def search(self, text: str) -> bool:
        """RE2's search, in time linear in ``text``; lone surrogates are bytes that match only ``.``."""
        spend()
        return self.regex.search(text.encode("utf-8", "surrogatepass")) is not None


def _re2_spelling(match: re.Match[str]) -> str:
    code = match.group(1) or match.group(2)
    if code:
        return f"\\x{{{code}}}"
    return "\\z" if match.group(3) else match.group(0)


def _linear(pattern: str) -> re2._Regexp:
    """``pattern`` compiled by RE2, or :class:`PatternError` naming what RE2 refused."""
    options = re2.Options()
    options.log_errors = False  # RE2 would print the client's pattern on stderr
    try:
        source = _RE2_SPELLING.sub(_re2_spelling, pattern).encode("utf-8")
        return re2.compile(source, options)
    except (re2.error, UnicodeEncodeError) as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise PatternError(
            f"invalid regular expression (RE2: {reason}); patterns are matched in linear time "
            f"with RE2, which has no {_RE2_LIMITS}"
        ) from None


@functools.lru_cache(maxsize=256)
def _compile(pattern: str) -> _Compiled:
    regex = _linear(pattern)
    try:
        flags = re.compile(pattern).flags
    except (re.error, OverflowError, RecursionError) as exc:
        raise PatternError(f"invalid regular expression: {exc}") from None
    try:
        tree = _Parser(pattern, flags & (re.IGNORECASE | re.DOTALL | re.MULTILINE)).parse()
    except (IndexError, KeyError, ValueError, re.error) as exc:
        if isinstance(exc, PatternError):
            raise
        raise PatternError(f"unsupported construct ({exc})") from None
    return _Compiled(regex, tree)


def check(pattern: str) -> None:
    """Raise :class:`PatternError` if ``pattern`` cannot be matched in linear time or sampled."""
    _compile(pattern)


def matches(pattern: str, text: str) -> bool:
    """JSON Schema semantics: the pattern is searched, not anchored (by RE2, in linear time)."""
    return _compile(pattern).search(text)


def sample(pattern: str, min_len: int, max_len: int | None, seed: Seed) -> str | None:
    """A string of length ``min_len..max_len`` that ``pattern`` matches (RE2's search).

    ``None`` when this seed's candidate fails the final check (try another
    seed); :class:`PatternError` when the pattern itself is unusable.
    """
    compiled = _compile(pattern)
    if compiled.tree.lo > MAX_PATTERN_LENGTH:
        raise PatternError(f"every match is longer than {MAX_PATTERN_LENGTH} characters")
    out: list[str] = []
    _Emitter(seed).emit(compiled.tree, min_len, max_len, out)
    text = "".join(out)
    for candidate in _padded(text, min_len, max_len, seed):
        if compiled.search(candidate):
            return candidate
    return None


def _padded(text: str, min_len: int, max_len: int | None, seed: Seed) -> list[str]:
    """``text`` itself if its length fits, else versions padded at either end."""
    if max_len is not None and len(text) > max_len:
        return []
    if len(text) >= min_len:
        return [text]
    short = min_len - len(text)
    filler = "".join(_ALPHABET[(seed.digest[i % 32] + i) % 52] for i in range(short))
    return [text + filler, filler + text, text + " " * short, " " * short + text]


class _Emitter:
    def __init__(self, seed: Seed):
        self.seed = seed
        self.counter = 0

    def choose(self, n: int) -> int:
        self.counter += 1
        return self.seed.digest[self.counter % 32] * (self.counter + 7) % n if n > 1 else 0

    def emit(self, node: _Node, lo: int, hi: int | None, out: list[str]) -> None:
        spend()
        if isinstance(node, _Lit):
            out.append(node.text)
        elif isinstance(node, _Class):
            out.append(self.char(node))
        elif isinstance(node, _Seq):
            self.emit_seq(node, lo, hi, out)
        elif isinstance(node, _Alt):
            self.emit_alt(node, lo, hi, out)
        elif isinstance(node, _Repeat):
            self.emit_repeat(node, lo, hi, out)
        elif isinstance(node, _Group):
            self.emit(node.node, lo, hi, out)

    def char(self, node: _Class) -> str:
        candidates = node.candidates
        start = self.choose(min(len(candidates), 64))
        for k in range(len(candidates)):
            c = candidates[(start + k) % len(candidates)]
            if node.regex.fullmatch(c):
                return c
        raise PatternError(f"no character found for the class {node.regex.pattern!r}")

    def emit_seq(self, node: _Seq, lo: int, hi: int | None, out: list[str]) -> None:
        parts = node.parts
        suffix_lo = [0] * (len(parts) + 1)
        suffix_hi: list[int | None] = [0] * (len(parts) + 1)
        for j in range(len(parts) - 1, -1, -1):
            suffix_lo[j] = suffix_lo[j + 1] + parts[j].lo
            suffix_hi[j] = _add(suffix_hi[j + 1], parts[j].hi)
        produced = 0
        for j, part in enumerate(parts):
            rest_lo, rest_hi = suffix_lo[j + 1], suffix_hi[j + 1]
            want_lo = part.lo if rest_hi is None else max(part.lo, lo - produced - rest_hi)
            produced += self.emit_within(part, want_lo, hi, produced + rest_lo, out)

    def emit_within(self, node: _Node, want_lo: int, hi: int | None, reserved: int, out: list[str]) -> int:
        """Emit ``node`` wanting at least ``want_lo`` characters, leaving ``reserved`` of ``hi``."""
        want_hi = None if hi is None else max(node.lo, hi - reserved)
        if node.hi is not None:
            want_hi = node.hi if want_hi is None else min(want_hi, node.hi)
        mark = len(out)
        self.emit(node, want_lo, want_hi, out)
        return sum(len(s) for s in out[mark:])

    def emit_alt(self, node: _Alt, lo: int, hi: int | None, out: list[str]) -> None:
        fitting = [o for o in node.options if (hi is None or o.lo <= hi) and (o.hi is None or o.hi >= lo)]
        options = fitting or list(node.options)
        self.emit(options[self.choose(len(options))], lo, hi, out)

    def emit_repeat(self, node: _Repeat, lo: int, hi: int | None, out: list[str]) -> None:
        child = node.node
        cap = node.max_count if node.max_count is not None else node.min_count + 3 + (lo if hi is None else hi)
        low = node.min_count
        if lo > 0 and child.hi is None:
            low = max(low, 1)
        elif lo > 0 and child.hi:
            low = max(low, -(-lo // child.hi))
        high = cap
        if hi is not None and child.lo > 0:
            high = min(high, hi // child.lo)
        natural = min(node.min_count + self.choose(3), cap)
        count = min(max(natural, low), high) if low <= high else low
        produced = 0
        for t in range(count):
            left = count - t - 1
            if child.hi is None:
                want_lo = child.lo if left else max(child.lo, lo - produced)
            else:
                want_lo = max(child.lo, lo - produced - left * child.hi)
            produced += self.emit_within(child, want_lo, hi, produced + left * child.lo, out)
