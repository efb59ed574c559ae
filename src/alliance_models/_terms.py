"""Which factors make up each column of a fitted model's fixed-effects design.

Read from the formulaic encoding the fit kept (``frame.fixed_model_spec``): its terms,
their factors in order and each factor's kind, so nothing is guessed from how a column
name looks. A column of the term ``x:C(arm)`` is the product of the factor columns
``x`` and ``C(arm)[T.b]``; the data variables a factor reads (``w`` for ``np.log(w)``,
``m`` for ``center(m)``) come from the package's own formula parser
(:func:`alliance_models.formula.parse_formula`), the one place that rule is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .errors import ModelSpecError
from .formula import parse_formula

__all__ = ["DesignColumn", "design_columns", "factor_variables"]


@dataclass(frozen=True)
class DesignColumn:
    """One column of the fixed-effects design.

    Attributes
    ----------
    name : str
        The column name (``"x:C(arm)[T.b]"``).
    factors : tuple of str
        Its factor columns, whose product it is (``("x", "C(arm)[T.b]")``); empty for
        the intercept.
    reads : tuple of tuple of str
        The data variables each factor reads (``(("x",), ("arm",))``).
    categorical : tuple of bool
        Whether each factor is a categorical encoding (a dummy or contrast column).
    """

    name: str
    factors: tuple[str, ...]
    reads: tuple[tuple[str, ...], ...]
    categorical: tuple[bool, ...]


@lru_cache(maxsize=256)
def factor_variables(expr: str) -> tuple[str, ...]:
    """Return the data variables one formula factor reads, by the package's formula rules.

    Examples
    --------
    >>> factor_variables("np.log(w)"), factor_variables("center(m)"), factor_variables("C(arm)")
    (('w',), ('m',), ('arm',))
    """
    # the parser reads whole formulas; "0 ~ expr" has no response variable
    return tuple(parse_formula(f"0 ~ {expr}").variables)


def _split(column: str, exprs: list[str]) -> tuple[str, ...]:
    """Cut ``column`` into the factor columns of a term with factors ``exprs`` (in order).

    formulaic names a product column ``":".join(factor columns)``; each factor column is
    the factor's expression, followed by ``[...]`` when the factor gives several columns
    (a categorical encoding, ``poly(x, 2)``). A level label may itself hold ``:`` or
    brackets, so every cut that fits is tried in turn.
    """
    found = _cuts(column, 0, exprs)
    if found is None:
        raise ModelSpecError(f"design column {column!r} does not follow its term {exprs}")
    return found


def _cuts(column: str, pos: int, exprs: list[str]) -> tuple[str, ...] | None:
    expr = exprs[0]
    if not column.startswith(expr, pos):
        return None
    stop = pos + len(expr)
    last = len(exprs) == 1
    ends = [len(column)] if last else []
    if not last:
        nxt = ":" + exprs[1]
        ends = [k for k in range(stop, len(column)) if column.startswith(nxt, k)]
    for end in ends:
        part = column[pos:end]
        if end > stop and not (column[stop] == "[" and part.endswith("]")):
            continue  # a suffix is always a bracketed label
        if last:
            return (part,)
        rest = _cuts(column, end + 1, exprs[1:])
        if rest is not None:
            return (part, *rest)
    return None


def design_columns(model_spec: Any) -> tuple[DesignColumn, ...]:
    """Describe every fixed-effects column of a formulaic model spec, in design order.

    Parameters
    ----------
    model_spec : formulaic ModelSpec
        ``frame.fixed_model_spec`` of a fitted model.

    Returns
    -------
    tuple of DesignColumn

    Examples
    --------
    >>> import pandas as pd
    >>> from alliance_models import parse_formula
    >>> d = pd.DataFrame({"y": [1.0, 2, 4, 3], "x": [0.0, 1, 2, 3], "g": list("abab")})
    >>> frame = parse_formula("y ~ x * C(g)").build(d)
    >>> [c.factors for c in design_columns(frame.fixed_model_spec)]
    [(), ('x',), ('C(g)[T.b]',), ('x', 'C(g)[T.b]')]
    """
    kinds = {name: str(getattr(state[0], "value", state[0]))
             for name, state in model_spec.encoder_state.items()}
    out: list[DesignColumn] = []
    for block in model_spec.structure:
        exprs = [f.expr for f in block.term.factors if f.eval_method.value != "literal"]
        reads = tuple(factor_variables(e) for e in exprs)
        categorical = tuple(kinds.get(e) == "categorical" for e in exprs)
        for column in block.columns:
            factors = _split(str(column), exprs) if exprs else ()
            out.append(DesignColumn(str(column), factors, reads, categorical))
    return tuple(out)
