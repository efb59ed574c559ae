"""Expand the fixed part of a model formula into terms exactly as R's ``terms()`` does.

A formula's right-hand side is read with R's operators and precedence (highest first):
``^`` (also written ``**``), ``:``, ``%in%``, ``*`` and ``/``, then ``+`` and ``-``
(unary minus included). Each term is a set of *variables*: column names, or calls such
as ``I(x**2)``, ``C(arm)``, ``np.log(m + 5)`` or ``center(age)``, taken whole. The rules
are those of R's ``src/library/stats/src/model.c``:

- ``a + b``: the terms of both, each once; ``a - b``: those of ``a`` that are not in ``b``;
- ``a:b``: every term of ``a`` times every term of ``b``; ``a * b`` = ``a + b + a:b``;
- ``a / b`` = ``a + b %in% a``; ``a %in% b``: every term of ``a`` times all variables of
  ``b``; ``(a + b + c)^2``: all products of up to two of them;
- ``1``/``+ 1`` keeps the intercept, ``0``, ``+ 0`` and ``- 1`` drop it;
- ``offset(x)`` is no term: it is listed in :attr:`FixedTerms.offset`;
- terms are ordered by their number of variables, then by when they were formed, and
  the variables within a term by their first appearance in the formula (so
  ``y ~ a + b:a`` has the terms ``a`` and ``a:b``).

Random-effects terms ``( ... | g)`` may appear as summands at the top level; the expansion
skips them and reports their positions (the lme4-style parser in
:mod:`alliance_models.formula` reads them). Inside a call, R's power operator ``^`` is
Python's ``**`` (``I(age^2)`` is evaluated as ``I(age**2)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .errors import ModelSpecError

__all__ = ["FixedTerms", "expand_fixed"]


@dataclass(frozen=True)
class FixedTerms:
    """The expanded fixed part of a formula.

    Attributes
    ----------
    terms : tuple of str
        Term labels in R's order, variables joined by ``":"`` (``("a", "b", "a:b")``).
    intercept : bool
        Whether the model has an intercept.
    offset : tuple of str
        The expressions inside ``offset()`` calls, in order.
    variables : tuple of str
        Every variable (name or call) of the fixed part, in order of first appearance.
    random : tuple of str
        The random-effects summands ``( ... | g)``, as written (without the parentheses).

    Examples
    --------
    >>> t = expand_fixed("(a + b) * (c + d) + (1 | g)")
    >>> t.terms
    ('a', 'b', 'c', 'd', 'a:c', 'a:d', 'b:c', 'b:d')
    >>> t.formula, t.random
    ('a + b + c + d + a:c + a:d + b:c + b:d', ('1 | g',))
    """

    terms: tuple[str, ...]
    intercept: bool
    offset: tuple[str, ...] = ()
    variables: tuple[str, ...] = ()
    random: tuple[str, ...] = ()

    @property
    def formula(self) -> str:
        """The terms as a right-hand side that keeps their order: ``"0 + a + a:b"``."""
        if not self.terms:
            return "1" if self.intercept else "0"
        body = " + ".join(self.terms)
        return body if self.intercept else f"0 + {body}"


# -- tokens ---------------------------------------------------------------------------------
_OPS = ("%in%", "**", "+", "-", "*", "/", ":", "^")


@dataclass(frozen=True)
class _Tok:
    kind: str  # "var", "num", "op", "(", ")", "random", "end"
    text: str
    pos: int


def _syntax_error(source: str, pos: int, what: str, base: int = 0,
                  whole: str = "") -> ModelSpecError:
    """Make an error that shows the formula with a caret under position ``pos``."""
    whole = whole or (" " * base + source)
    return ModelSpecError(
        f"cannot read the formula: {what} at column {base + pos + 1}\n"
        f"    {whole}\n    {' ' * (base + pos)}^"
    )


def _match_paren(s: str, i: int) -> int:
    """Index of the bracket closing the one at ``s[i]`` (quotes respected), or -1."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    stack: list[str] = []
    quote = ""
    j = i
    while j < len(s):
        ch = s[j]
        if quote:
            if ch == "\\":
                j += 2
                continue
            if ch == quote:
                quote = ""
        elif ch in "'\"`":
            quote = ch
        elif ch in pairs:
            stack.append(pairs[ch])
        elif ch in ")]}":
            if not stack or ch != stack.pop():
                return -1
            if not stack:
                return j
        j += 1
    return -1


def _top_level_bar(inner: str) -> bool:
    depth = 0
    for ch in inner:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "|" and depth == 0:
            return True
    return False


def _tokens(s: str, base: int, whole: str = "") -> list[_Tok]:
    out: list[_Tok] = []
    i = 0
    n = len(s)
    while i < n:
        ch = s[i]
        if ch.isspace():
            i += 1
            continue
        if ch == "(":
            close = _match_paren(s, i)
            if close < 0:
                raise _syntax_error(s, i, "unbalanced parentheses: this '(' is never closed",
                                    base, whole)
            if _top_level_bar(s[i + 1 : close]):
                out.append(_Tok("random", s[i + 1 : close].strip(), i))
                i = close + 1
            else:
                out.append(_Tok("(", ch, i))
                i += 1
            continue
        if ch == ")":
            out.append(_Tok(")", ch, i))
            i += 1
            continue
        op = next((o for o in _OPS if s.startswith(o, i)), None)
        if op is not None:
            out.append(_Tok("op", "^" if op == "**" else op, i))
            i += len(op)
            continue
        if ch == "%":
            end = s.find("%", i + 1)
            what = s[i : end + 1] if end > 0 else "%"
            raise _syntax_error(s, i, f"unknown operator {what!r} (only %in%)", base, whole)
        if ch.isdigit() or (ch == "." and i + 1 < n and s[i + 1].isdigit()):
            j = i
            while j < n and (s[j].isdigit() or s[j] == "."):
                j += 1
            out.append(_Tok("num", s[i:j], i))
            i = j
            continue
        if ch.isalpha() or ch in "._":
            j = i
            while j < n and (s[j].isalnum() or s[j] in "._"):
                j += 1
            k = j
            while k < n and s[k].isspace():
                k += 1
            if k < n and s[k] == "(":  # a call: taken whole
                close = _match_paren(s, k)
                if close < 0:
                    raise _syntax_error(s, k, "unbalanced parentheses: this '(' is never closed",
                                        base, whole)
                out.append(_Tok("var", s[i : close + 1], i))
                i = close + 1
            else:
                if s[i:j] == ".":
                    raise _syntax_error(s, i, "'.' (all other columns) is not supported",
                                        base, whole)
                out.append(_Tok("var", s[i:j], i))
                i = j
            continue
        if ch in "`{":
            close = s.find("`", i + 1) if ch == "`" else _match_paren(s, i)
            if close < 0:
                raise _syntax_error(s, i, f"this {ch} is never closed", base, whole)
            out.append(_Tok("var", s[i : close + 1], i))
            i = close + 1
            continue
        raise _syntax_error(s, i, f"unexpected {ch!r}", base, whole)
    out.append(_Tok("end", "", n))
    return out


# -- parse to a tree ------------------------------------------------------------------------
# precedence of the binary operators (R's ?Syntax): higher binds tighter
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "%in%": 3, ":": 4, "^": 6}
_UNARY_MINUS = 5


class _Parser:
    def __init__(self, s: str, base: int, whole: str = "") -> None:
        self.s = s
        self.base = base
        self.whole = whole
        self.toks = _tokens(s, base, whole)
        self.i = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def error(self, tok: _Tok, what: str) -> ModelSpecError:
        return _syntax_error(self.s, tok.pos, what, self.base, self.whole)

    def parse(self) -> tuple:
        if self.peek().kind == "end":
            raise self.error(self.peek(), "no terms")
        tree = self.expr(0)
        tok = self.peek()
        if tok.kind != "end":
            raise self.error(tok, f"unexpected {tok.text!r}")
        return tree

    def expr(self, min_prec: int) -> tuple:
        left = self.unary()
        while True:
            tok = self.peek()
            if tok.kind != "op":
                if tok.kind in ("var", "num", "(", "random"):
                    raise self.error(tok, f"unexpected {tok.text!r} (an operator is missing)")
                return left
            prec = _PREC[tok.text]
            if prec < min_prec:
                return left
            self.take()
            # ^ is right-associative, the others left-associative
            right = self.expr(prec if tok.text == "^" else prec + 1)
            left = ("op", tok.text, left, right, tok)

    def unary(self) -> tuple:
        tok = self.peek()
        if tok.kind == "op" and tok.text in ("-", "+"):
            self.take()
            operand = self.expr(_UNARY_MINUS)
            return ("neg", operand, tok) if tok.text == "-" else operand
        return self.atom()

    def atom(self) -> tuple:
        tok = self.take()
        if tok.kind == "(":
            inner = self.expr(0)
            close = self.take()
            if close.kind != ")":
                raise self.error(close, f"expected ')' here, found {close.text or 'the end'!r}")
            return ("paren", inner)
        if tok.kind in ("var", "num", "random"):
            return (tok.kind, tok.text, tok)
        if tok.kind == "end":
            raise self.error(tok, "the formula ends where a term is expected")
        raise self.error(tok, f"unexpected {tok.text!r}")


# -- evaluate (R's model.c) -----------------------------------------------------------------
class _Encoder:
    def __init__(self, parser: _Parser) -> None:
        self.p = parser
        self.vars: list[str] = []  # written text of each variable, by first appearance
        self.keys: dict[str, int] = {}  # whitespace-free text -> index
        self.intercept = True
        self.parity = True
        self.offsets: list[int] = []
        self.random: list[str] = []

    def var(self, text: str) -> int:
        key = "".join(text.split())
        if key not in self.keys:
            self.keys[key] = len(self.vars)
            self.vars.append(text.strip())
        return self.keys[key]

    def collect(self, node: tuple) -> None:
        """Register variables in order of appearance (R's ExtractVars)."""
        kind = node[0]
        if kind == "var":
            self.var(node[1])
        elif kind == "op":
            self.collect(node[2])
            self.collect(node[3])
        elif kind in ("neg", "paren"):
            self.collect(node[1])

    def encode(self, node: tuple, top: bool = False) -> list[frozenset[int]]:
        kind = node[0]
        if kind == "paren":
            return self.encode(node[1], top=False)
        if kind == "random":
            if not top:
                raise self.p.error(node[2], "a random-effects term (... | g) must be added "
                                             "with '+', not combined with other terms")
            self.random.append(node[1])
            return []
        if kind == "num":
            if node[1] in ("1", "1.0"):
                self.intercept = self.parity
            elif node[1] in ("0", "0.0"):
                self.intercept = not self.parity
            else:
                raise self.p.error(node[2], f"the number {node[1]} is not a term (only 0 or 1)")
            return []
        if kind == "var":
            idx = self.var(node[1])
            key = "".join(node[1].split())
            if key.startswith("offset("):
                if not top:
                    raise self.p.error(node[2], "offset() must be added with '+'")
                self.offsets.append(idx)
                return []
            return [frozenset([idx])]
        if kind == "neg":
            return self.delete([], node[1])
        op, left, right, tok = node[1], node[2], node[3], node[4]
        sums = op in ("+", "-")
        if op == "-":
            return self.delete(self.encode(left, top=top), right)
        a = self.encode(left, top=top and sums)
        if op == "^":
            if right[0] == "paren":
                right = right[1]
            if right[0] != "num" or not right[1].isdigit() or int(right[1]) < 1:
                raise self.p.error(tok, "'^' needs a whole number >= 1 on its right")
            return self.power(a, int(right[1]))
        b = self.encode(right, top=top and sums)
        if op == "+":
            return self.trim(a + b)
        if op == ":":
            return self.trim([x | y for x in a for y in b])
        if op == "*":
            return self.trim(a + b + [x | y for x in a for y in b])
        if op == "/":
            all_a = frozenset().union(*a) if a else frozenset()
            return self.trim(a + [y | all_a for y in b])
        if op == "%in%":
            all_b = frozenset().union(*b) if b else frozenset()
            return self.trim([x | all_b for x in a])
        raise self.p.error(tok, f"unknown operator {op!r}")  # pragma: no cover

    def delete(self, left: list[frozenset[int]], node: tuple) -> list[frozenset[int]]:
        self.parity = not self.parity
        right = self.encode(node, top=False)
        self.parity = not self.parity
        drop = set(right)
        return [t for t in left if t not in drop]

    @staticmethod
    def power(a: list[frozenset[int]], k: int) -> list[frozenset[int]]:
        out = list(a)
        for _ in range(k - 1):
            out = _Encoder.trim([x | y for x in a for y in out])
        return _Encoder.trim(out)

    @staticmethod
    def trim(terms: list[frozenset[int]]) -> list[frozenset[int]]:
        seen: set[frozenset[int]] = set()
        out = []
        for t in terms:
            if t and t not in seen:
                seen.add(t)
                out.append(t)
        return out


def _call_text(v: str) -> str:
    """Write a call as formulaic evaluates it: R's ``^`` inside is Python's ``**``."""
    if "(" not in v or "^" not in v:
        return v
    out = []
    quote = ""
    for ch in v:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "^":
            out.append("**")
            continue
        out.append(ch)
    return "".join(out)


@lru_cache(maxsize=512)
def expand_fixed(rhs: str, *, base: int = 0, formula: str = "") -> FixedTerms:
    """Expand a formula's right-hand side into R's terms.

    Parameters
    ----------
    rhs : str
        The part right of ``~`` (random-effects summands allowed).
    base : int, default 0
        Where ``rhs`` starts in ``formula``, so that syntax errors point at the right
        column of it.
    formula : str, optional
        The whole formula, shown in syntax errors (default: ``rhs``).

    Returns
    -------
    FixedTerms

    Raises
    ------
    ModelSpecError
        A syntax error, showing the formula with a caret under the offending token.

    Examples
    --------
    >>> expand_fixed("(a + b + c)^2 - a:b").terms
    ('a', 'b', 'c', 'a:c', 'b:c')
    >>> t = expand_fixed("x * C(arm) - 1 + offset(log(days))")
    >>> t.terms, t.intercept, t.offset
    (('x', 'C(arm)', 'x:C(arm)'), False, ('log(days)',))
    >>> expand_fixed("b:a + a").terms  # variables in order of appearance: b, a
    ('a', 'b:a')
    """
    parser = _Parser(rhs, base, formula)
    tree = parser.parse()
    enc = _Encoder(parser)
    enc.collect(tree)
    terms = enc.encode(tree, top=True)
    order = sorted(range(len(terms)), key=lambda k: len(terms[k]))  # stable
    labels = tuple(
        ":".join(_call_text(enc.vars[v]) for v in sorted(terms[k])) for k in order
    )
    offsets = []
    for idx in enc.offsets:
        text = enc.vars[idx]
        offsets.append(_call_text(text[text.index("(") + 1 : text.rindex(")")].strip()))
    return FixedTerms(
        terms=labels,
        intercept=enc.intercept,
        offset=tuple(offsets),
        variables=tuple(v for k, v in enumerate(enc.vars) if k not in enc.offsets),
        random=tuple(enc.random),
    )
