"""Tests for :mod:`airgap_proxy.fallback.jsonschema.pattern` and :mod:`airgap_proxy.fallback.text`.

Samples are checked with RE2 (:func:`pattern.matches`, or the binding directly): the semantics the
proxy matches with.
"""

from __future__ import annotations

import re
import time

import pytest
import re2
from hypothesis import example, given, settings
from hypothesis import strategies as st

from airgap_proxy.fallback.jsonschema import pattern
from airgap_proxy.fallback.seed import Seed
from airgap_proxy.fallback.text import count_tokens, fragments, shape, truncate, word_pieces

SEEDS = [Seed.of(b"pattern", bytes([i])) for i in range(8)]

PATTERNS = [
    pytest.param("abc", id="literal, unanchored"),
    pytest.param("^abc$", id="anchored literal"),
    pytest.param("^a.c$", id="dot"),
    pytest.param("^[a-z]{3,5}$", id="class with counted repeat"),
    pytest.param("^[A-Za-z0-9_-]+$", id="several ranges"),
    pytest.param("^[^a-z\\s]{4}$", id="negated class"),
    pytest.param("^[]a]+$", id="bracket first in class"),
    pytest.param("^[a\\-z]+$", id="escaped dash"),
    pytest.param("^[\\d.]+$", id="category in class"),
    pytest.param("^\\d\\w\\s\\D\\W\\S$", id="categories and negations"),
    pytest.param("^\\x41\\u00e9\\n\\t\\.\\*$", id="escapes"),
    pytest.param("^\\0$", id="null escape"),
    pytest.param("^a*b+c?d{2}e{1,3}f{2,}g{,2}$", id="every quantifier"),
    pytest.param("^a*?b+?c??$", id="lazy quantifiers"),
    pytest.param("^x{2}{3}$".replace("{2}{3}", "{6}"), id="counted"),
    pytest.param("^a{,3}b$", id="brace without a lower bound is a literal, as in RE2"),
    pytest.param("^a{x}$", id="brace that is a literal"),
    pytest.param("^(ab|cd|ef)+$", id="group alternation"),
    pytest.param("^(?:x|y)(?:z)?$", id="non-capturing"),
    pytest.param("^(?P<year>\\d{4})-(?P<month>\\d{2})$", id="named groups"),
    pytest.param("(?i)^hello$", id="global flag"),
    pytest.param("^(?i:abc)d$", id="scoped flag"),
    pytest.param("\\bword\\b", id="word boundaries"),
    pytest.param("\\Astart", id="string anchor"),
    pytest.param("^end\\Z", id="end anchor, spelt as in Python"),
    pytest.param("^$", id="empty"),
    pytest.param("|x", id="empty alternative"),
    pytest.param("^(a|)+$", id="repeat of something that may be empty"),
    pytest.param("^[\\u4e00-\\u9fff]{2}$", id="CJK range"),
    pytest.param("^[^\\x00-\\x7f]+$", id="non-ASCII only"),
    pytest.param("^(\\d{1,3}\\.){3}\\d{1,3}$", id="IPv4-like"),
    pytest.param("^[A-Z]{2}\\d{2}[A-Z0-9]{1,30}$", id="IBAN-like"),
    pytest.param("^\\+?[1-9]\\d{1,14}$", id="E.164"),
    pytest.param("^([01]\\d|2[0-3]):[0-5]\\d$", id="clock time"),
    pytest.param("^[a-z0-9]+(?:-[a-z0-9]+)*$", id="slug"),
    pytest.param("^v\\d+\\.\\d+\\.\\d+(-[0-9A-Za-z.-]+)?$", id="semver"),
]


@pytest.mark.parametrize("regex", PATTERNS)
def test_samples_match(regex: str) -> None:
    found = [pattern.sample(regex, 0, None, seed) for seed in SEEDS]
    assert all(s is not None for s in found), found
    for text in found:
        assert text is not None and pattern.matches(regex, text), (regex, text)
    assert found == [pattern.sample(regex, 0, None, seed) for seed in SEEDS], "deterministic"


@pytest.mark.parametrize(
    ("regex", "lo", "hi"),
    [
        ("^[a-z]+$", 10, 10),
        ("^[a-z]+$", 1, 1),
        ("^[a-z]*$", 0, 0),
        ("^(foo|bar)+$", 7, 9),
        ("^(ab|c)*$", 5, 5),
        ("^\\w+@\\w+\\.com$", 20, 25),
        ("^[A-Z][a-z]*( [A-Z][a-z]*)*$", 30, 40),
        ("abc", 12, 15),
        ("^abc", 8, None),
        ("abc$", 8, 8),
        ("^\\d{2,}-\\d+$", 50, 60),
        ("^(a|bb|ccc){2,4}$", 6, 6),
    ],
)
def test_samples_respect_length_bounds(regex: str, lo: int, hi: int | None) -> None:
    for seed in SEEDS:
        text = pattern.sample(regex, lo, hi, seed)
        assert text is not None
        assert pattern.matches(regex, text)
        assert lo <= len(text) and (hi is None or len(text) <= hi), text


@pytest.mark.parametrize(("regex", "lo", "hi"), [("^a{3}$", 5, None), ("^[ab]{2}$", 0, 1), ("^$", 1, None)])
def test_impossible_lengths_give_none(regex: str, lo: int, hi: int | None) -> None:
    assert all(pattern.sample(regex, lo, hi, seed) is None for seed in SEEDS)


@pytest.mark.parametrize(
    ("regex", "message"),
    [
        ("(unclosed", "invalid regular expression"),
        ("[z-a]", "invalid regular expression"),
        ("a**", "invalid regular expression"),
        ("(?x) a b", "RE2"),
        ("\\N{LATIN SMALL LETTER A}", "RE2"),
        ("(?<x>a)", "invalid regular expression"),
    ],
)
def test_unusable_patterns_raise(regex: str, message: str) -> None:
    with pytest.raises(pattern.PatternError, match=re.escape(message)):
        pattern.sample(regex, 0, None, SEEDS[0])


@pytest.mark.parametrize(
    "regex",
    [
        pytest.param("^(?=.*\\d)[a-z0-9]{8}$", id="lookahead"),
        pytest.param("(a+)+(?=b)c", id="lookahead after a nested quantifier"),
        pytest.param("^(?!x)a$", id="negative lookahead"),
        pytest.param("(?<=a)b", id="lookbehind"),
        pytest.param("^(a|b)\\1$", id="numbered back-reference"),
        pytest.param("^(?P<y>a)(?P=y)$", id="named back-reference"),
        pytest.param("^(?>ab|a)c$", id="atomic group"),
        pytest.param("^a++b*+$", id="possessive quantifiers"),
        pytest.param("(a)?(?(1)b|c)", id="conditional group"),
        pytest.param("^a(?#comment)b$", id="comment"),
    ],
)
def test_patterns_with_no_linear_time_match_are_refused(regex: str) -> None:
    with pytest.raises(pattern.PatternError, match=r"RE2.*linear time"):
        pattern.check(regex)
    with pytest.raises(pattern.PatternError):
        pattern.matches(regex, "a")


@pytest.mark.parametrize(
    ("regex", "text"),
    [
        ("^(a+)+$", "a" * 5000 + "b"),
        ("^(a|aa)+$", "a" * 5000 + "!"),
        ("^(\\w+\\s?)*$", "word " * 2000 + "!"),
        ("^([a-z]+)*[0-9]$", "x" * 5000),
    ],
)
def test_catastrophic_backtracking_patterns_match_in_linear_time(regex: str, text: str) -> None:
    started = time.perf_counter()
    assert not pattern.matches(regex, text)
    assert time.perf_counter() - started < 0.1


def test_lone_surrogates_are_matched_not_raised() -> None:
    assert pattern.matches("^a.b$", "a\ud800b")
    assert not pattern.matches("^[a-z]+$", "a\ud800b")
    with pytest.raises(pattern.PatternError):
        pattern.check("\ud800")


ATOMS = st.one_of(
    st.sampled_from("abcxyz019").map(re.escape),
    st.sampled_from([".", "\\d", "\\w", "\\s", "\\D", "[a-f]", "[^a-z]", "[0-9A-F_]", "\\.", "-", "\\$"]),
)


def _quantified(atom: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(atom, st.sampled_from(["", "", "*", "+", "?", "{2}", "{1,3}", "{2,}", "*?"])).map("".join)


REGEXES = st.recursive(
    _quantified(ATOMS),
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=4).map("".join),
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: "(" + "|".join(xs) + ")"),
        _quantified(inner.map(lambda x: f"(?:{x})")),
    ),
    max_leaves=8,
)


@given(REGEXES, st.booleans(), st.booleans(), st.integers(0, 7))
@settings(max_examples=300, deadline=None)
def test_generated_regexes(body: str, start: bool, end: bool, seed: int) -> None:
    regex = ("^" if start else "") + body + ("$" if end else "")
    text = pattern.sample(regex, 0, None, SEEDS[seed])
    assert text is not None, regex
    assert re2.search(regex, text), (regex, text)


@given(REGEXES, st.integers(0, 30), st.integers(0, 10), st.integers(0, 7))
@settings(max_examples=200, deadline=None)
def test_generated_regexes_with_lengths_are_right_or_none(body: str, lo: int, extra: int, seed: int) -> None:
    regex = f"^{body}$"
    text = pattern.sample(regex, lo, lo + extra, SEEDS[seed])
    if text is not None:
        assert re2.search(regex, text)
        assert lo <= len(text) <= lo + extra


# --------------------------------------------------------------------------- #
# Text shaping
# --------------------------------------------------------------------------- #


@given(st.text(max_size=200))
def test_word_pieces_and_fragments_join_back(text: str) -> None:
    assert "".join(word_pieces(text)) == text
    assert "".join(fragments(text)) == text
    assert all(piece for piece in word_pieces(text))


@given(st.text(max_size=200), st.integers(0, 60))
@example(text=" 0000", limit=1)  # a leading space, then a word longer than the budget
def test_truncate_is_a_prefix_within_the_budget(text: str, limit: int) -> None:
    cut = truncate(text, limit)
    assert text.startswith(cut)
    assert count_tokens(cut) <= limit


@given(st.text(max_size=80), st.lists(st.text(max_size=3), max_size=4), st.none() | st.integers(0, 30))
def test_shape(text: str, stop: list[str], limit: int | None) -> None:
    shaped = shape(text, stop, limit)
    assert text.startswith(shaped.text)
    assert not any(s and s in shaped.text for s in stop)
    assert shaped.finish_reason in ("stop", "length")
    if limit is not None:
        assert count_tokens(shaped.text) <= limit


def test_token_estimate() -> None:
    assert [count_tokens(t) for t in ("", "a", "abcd", "abcde", "x" * 400)] == [0, 1, 1, 2, 100]
