"""Parse lme4-style formulas into a :class:`~alliance_models.spec.ModelSpec`.

Supported random-effects syntax: ``(1 | g)``, ``(1 + x | g)``, ``(0 + x | g)``,
``(x || g)`` (uncorrelated), nested ``(1 | g1/g2)`` (expanded to
``(1 | g1) + (1 | g1:g2)``) and explicit ``(1 | g1:g2)``. The fixed part is expanded
into terms as R's ``terms()`` does (:mod:`alliance_models.formula_terms`: ``*``, ``:``,
``/``, ``%in%``, ``^`` on sums, ``-``, ``0 +``/``- 1``, ``offset()``); its variables are
column names or formulaic calls (``C()``, ``I()``, numpy transformations).
"""

from __future__ import annotations

import ast
import re

from .errors import ModelSpecError
from .formula_terms import expand_fixed
from .spec import ModelSpec, RandomTerm

__all__ = ["parse_formula"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_KNOWN_FUNCS = {"C", "I", "np", "log", "exp", "sqrt", "center", "scale", "standardize", "poly"}


def _split_top(s: str, sep: str) -> list[str]:
    """Split ``s`` on ``sep`` where it is not inside parentheses."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    i = 0
    while i < len(s):
        ch = s[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ModelSpecError(f"unbalanced parentheses in {s!r}")
        if depth == 0 and s.startswith(sep, i):
            parts.append("".join(cur))
            cur = []
            i += len(sep)
            continue
        cur.append(ch)
        i += 1
    if depth != 0:
        raise ModelSpecError(f"unbalanced parentheses in {s!r}")
    parts.append("".join(cur))
    return parts


_DOTTED = re.compile(r"(?<![\w.])([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)+)(?![\w.]*\s*\()")
_MODULES = {"np", "numpy", "math", "scipy"}


def _variables(expr: str) -> list[str]:
    """Column names referenced by a formula expression (not function names)."""
    code = expr.replace("||", "|")
    # R-style dotted column names (``wai.total``) are names, not attribute access;
    # ``np.log`` and other module paths are left alone
    dotted: dict[str, str] = {}

    def _sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name.split(".")[0] in _MODULES:
            return name
        key = f"__dotted{len(dotted)}__"
        dotted[key] = name
        return key

    code = _DOTTED.sub(_sub, code)
    # formula operators that are not Python syntax: turn them into something parseable
    code = re.sub(r"(?<![\w)])\.", " ", code)
    try:
        tree = ast.parse(code.replace(":", "*").replace("~", "-"), mode="eval")
    except SyntaxError as err:
        raise ModelSpecError(f"cannot parse formula expression {expr!r}: {err.msg}") from None
    names: list[str] = []
    funcs: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            while isinstance(f, ast.Attribute):
                f = f.value  # type: ignore[assignment]
            funcs.add(id(f))
            if isinstance(node.func, ast.Attribute):
                funcs.add(id(node.func))
        if isinstance(node, ast.Attribute):
            v = node.value
            while isinstance(v, ast.Attribute):
                v = v.value
            funcs.add(id(v))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and id(node) not in funcs and node.id not in _KNOWN_FUNCS:
            name = dotted.get(node.id, node.id)
            if name not in names:
                names.append(name)
    return names


def _is_random(part: str) -> bool:
    """Whether a summand is one random-effects term ``( ... | g)``."""
    if not (part.startswith("(") and part.endswith(")")):
        return False
    depth = 0
    for k, ch in enumerate(part):
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and k < len(part) - 1:
            return False  # the first parenthesis closes before the end: "(a) * (b)"
    return len(_split_top(part[1:-1], "|")) > 1


def _parse_random(body: str, formula: str) -> list[RandomTerm]:
    if "||" in body:
        lhs, rhs = body.split("||", 1)
        correlated = False
    else:
        bits = _split_top(body, "|")
        if len(bits) != 2:
            raise ModelSpecError(f"random term ({body}) must have the form (expr | group)")
        lhs, rhs = bits
        correlated = True
    lhs, rhs = lhs.strip(), rhs.strip()
    if not lhs or not rhs:
        raise ModelSpecError(f"random term ({body}) in {formula!r} needs both expr and group")
    pieces = [p.strip() for p in _split_top(lhs, "+")]
    intercept = True
    slopes: list[str] = []
    for p in pieces:
        if p == "1":
            intercept = True
        elif p in ("0", "-1"):
            intercept = False
        elif p.startswith("0"):  # "0 + x" handled by split; tolerate "0+x"
            intercept = False
        elif p.endswith("- 1") or p.endswith("-1"):
            intercept = False
            slopes.append(p.rsplit("-", 1)[0].strip())
        else:
            slopes.append(p)
    if not intercept and not slopes:
        raise ModelSpecError(f"random term ({body}) has neither an intercept nor a slope")
    # grouping: g, g1/g2, g1:g2
    nest = [g.strip() for g in rhs.split("/")]
    for g in nest:
        for f in g.split(":"):
            if not _IDENT.match(f.strip()):
                raise ModelSpecError(
                    f"grouping factor {f.strip()!r} in ({body}) must be a column name"
                )
    terms: list[RandomTerm] = []
    acc: list[str] = []
    for g in nest:
        acc = acc + [f.strip() for f in g.split(":")]
        terms.append(
            RandomTerm(
                expr=lhs,
                group=":".join(acc),
                factors=tuple(acc),
                intercept=intercept,
                slopes=tuple(slopes),
                correlated=correlated,
            )
        )
    return terms


def parse_formula(formula: str) -> ModelSpec:
    """Parse an lme4-style formula.

    Parameters
    ----------
    formula : str
        E.g. ``"adherence ~ alliance * (age + autonomy) + (1 | therapist/patient)"``.

    Returns
    -------
    ModelSpec

    Raises
    ------
    ModelSpecError
        When the formula has no ``~``, unbalanced parentheses or a malformed random term.

    Examples
    --------
    >>> spec = parse_formula("Reaction ~ Days + (Days | Subject)")
    >>> spec.response, spec.fixed, spec.random[0].slopes
    ('Reaction', 'Days', ('Days',))
    >>> [t.group for t in parse_formula("y ~ x + (1 | a/b)").random]
    ['a', 'a:b']
    """
    if not isinstance(formula, str) or "~" not in formula:
        raise ModelSpecError(f"formula must be a string 'response ~ terms', got {formula!r}")
    lhs, rest = formula.split("~", 1)
    lhs, rhs = lhs.strip(), rest.strip()
    if not lhs:
        raise ModelSpecError(f"formula {formula!r} has no response left of '~'")
    if not rhs:
        raise ModelSpecError(f"formula {formula!r} has no terms right of '~'")
    # R's terms() expansion of the whole right-hand side: syntax errors point at the token
    base = len(formula) - len(rest) + (len(rest) - len(rest.lstrip()))
    expanded = expand_fixed(rhs, base=base, formula=formula)
    fixed_parts: list[str] = []
    random: list[RandomTerm] = []
    for raw in _split_top(rhs, "+"):
        part = raw.strip()
        if not part:
            raise ModelSpecError(f"empty term in formula {formula!r}")
        if _is_random(part):
            random.extend(_parse_random(part[1:-1], formula))
            continue
        fixed_parts.append(part)
    if len(random) < sum(len(_parse_random(r, formula)) for r in expanded.random):
        raise ModelSpecError(
            f"a random-effects term in {formula!r} is not a summand of its own; add each "
            "one with '+' (e.g. 'y ~ x - 1 + (1 | g)', not 'y ~ x + (1 | g) - 1')"
        )
    fixed = " + ".join(fixed_parts) if fixed_parts else "1"
    seen: dict[str, RandomTerm] = {}
    for t in random:
        if t.group in seen and seen[t.group] == t:
            raise ModelSpecError(f"random term {t} appears twice in {formula!r}")
        seen[t.group] = t
    variables: list[str] = []
    fixed_vars = [v for x in (*expanded.variables, *expanded.offset) for v in _variables(x)]
    for v in _variables(lhs) + fixed_vars:
        if v not in variables:
            variables.append(v)
    for t in random:
        for s in t.slopes:
            for v in _variables(s):
                if v not in variables:
                    variables.append(v)
        for f in t.factors:
            if f not in variables:
                variables.append(f)
    return ModelSpec(
        formula=formula,
        response=lhs,
        fixed=fixed,
        random=tuple(random),
        variables=tuple(variables),
    )
