r"""MkDocs hooks for the documentation site (``make docs``).

The API reference is generated from the public names only: ``alliance_models.__all__``,
each resolved through the package's lazy ``__getattr__`` at build time. The page
source (``docs/api.md``) names no internal module, so moving code between modules
does not break it; the resolved location is only handed to mkdocstrings, which reads
the docstrings statically. Names missing from :data:`SECTIONS` still appear (under
"Other"), so a new public name is documented without editing this file.

Maths is written in TeX (``\( ... \)`` inline, ``$$ ... $$`` displayed), marked up by
``pymdownx.arithmatex`` and converted here to MathML with latex2mathml, which browsers
render natively: no JavaScript and nothing fetched from a CDN when a page is viewed.
"""

from __future__ import annotations

import html
import importlib
import inspect
import logging
import pkgutil
import re
import types
from typing import Any

import alliance_models as am

MARKER = "<!-- api-reference -->"
log = logging.getLogger("mkdocs.hooks.alliance_models")

#: Section title -> public names, in page order.
SECTIONS: dict[str, list[str]] = {
    "Data: reading, scoring, preparing": [
        "read_data", "read_redcap", "score", "prepare", "DataReport", "datasets",
    ],
    "Instruments (scoring keys)": [
        "list_instruments", "get_instrument", "register_instrument", "Instrument",
    ],
    "Formulas and model frames": ["parse_formula", "ModelSpec", "RandomTerm", "ModelFrame"],
    "Frequentist models": ["fit_mixed", "MixedFit", "fit_ols", "OLSFit", "fit_gee", "GEEFit"],
    "Bayesian models": ["fit_bayes", "BayesFit", "compare", "ComparisonResult"],
    "Probing interactions": [
        "simple_slopes", "SimpleSlopes", "johnson_neyman", "JohnsonNeyman",
        "conditional_effects", "ConditionalEffects",
    ],
    "Plots": ["plot_interaction", "plot_johnson_neyman", "plot_power_curve"],
    "Planning trials: simulation and power": [
        "Design", "simulate", "power", "PowerResult", "power_curve", "PowerCurve",
        "sample_size", "SampleSizeResult",
    ],
    "Planning trials: closed-form power": [
        "design_power", "cluster_randomised_power", "cluster_randomised_se",
        "cluster_randomised_therapists", "design_effect", "noncentral_t_power",
    ],
    "Report": ["report"],
    "Errors and warnings": [
        "AllianceModelsError", "DataValidationError", "ModelSpecError", "DesignError",
        "AllianceModelsWarning", "ConvergenceWarning", "SingularFitWarning",
        "FewClustersWarning", "MissingDataWarning", "DiagnosticsWarning",
    ],
}


def _function_in_package(module: types.ModuleType, name: str) -> Any | None:
    """Return the function ``name`` defined in ``module`` or a submodule (or None)."""
    own = getattr(module, name, None)
    if callable(own) and not inspect.ismodule(own):
        return own
    for info in pkgutil.walk_packages(getattr(module, "__path__", []), module.__name__ + "."):
        if info.name.rsplit(".", 1)[-1].startswith("_"):
            continue
        sub = importlib.import_module(info.name)
        obj = sub.__dict__.get(name)
        if inspect.isfunction(obj) and obj.__module__ == sub.__name__:
            return obj
    return None


def resolve(name: str) -> tuple[str, str]:
    """Return (dotted path for mkdocstrings, kind) of the public name ``am.<name>``."""
    obj = getattr(am, name)
    if inspect.ismodule(obj):
        # a callable module (``am.report(...)``) is documented as the function it calls
        func = _function_in_package(obj, name) if callable(obj) else None
        if func is None:
            return obj.__name__, "module"
        obj = func
    kind = "class" if inspect.isclass(obj) else "function"
    return f"{obj.__module__}.{obj.__qualname__}", kind


def public_names() -> list[str]:
    """Every name in ``alliance_models.__all__`` (the documented public API)."""
    return sorted(am.__all__)


def sections() -> dict[str, list[str]]:
    """:data:`SECTIONS` restricted to public names, plus "Other" for any name not listed."""
    public = set(public_names())
    out = {title: [n for n in names if n in public] for title, names in SECTIONS.items()}
    listed = {n for names in out.values() for n in names}
    rest = sorted(public - listed)
    if rest:
        out["Other"] = rest
    return {title: names for title, names in out.items() if names}


def api_markdown() -> str:
    """Return the generated body of the API reference page."""
    parts = []
    for title, names in sections().items():
        parts.append(f"## {title}\n")
        for name in names:
            path, kind = resolve(name)
            parts.append(
                f"::: {path}\n"
                "    options:\n"
                f'      heading: "am.{name}"\n'
                f'      toc_label: "am.{name}"\n'
                "      heading_level: 3\n"
                f"      show_root_toc_entry: true\n"
            )
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """Replace the marker on the API page with the generated reference."""
    if MARKER in markdown:
        return markdown.replace(MARKER, api_markdown())
    return markdown


_MATH = re.compile(
    r'<(span|div) class="arithmatex">(?:\\\((?P<inline>.*?)\\\)|\\\[(?P<block>.*?)\\\])</\1>',
    re.S,
)


def _mathml(match: re.Match[str]) -> str:
    from latex2mathml.converter import convert as tex_to_mathml

    if match.group("inline") is not None:
        return tex_to_mathml(html.unescape(match.group("inline")).strip())
    return tex_to_mathml(html.unescape(match.group("block")).strip(), display="block")


#: a Sphinx role left in a numpydoc docstring, as Markdown renders it: :func:<code>~x.y</code>,
#: or as it stays inside a type rendered as code: :func:`~x.y`
_ROLES = "func|class|meth|mod|attr|data|exc|obj"
_ROLE = re.compile(rf":(?:py:)?(?:{_ROLES}):<code>(~?)([^<]*)</code>")
_ROLE_IN_CODE = re.compile(rf":(?:py:)?(?:{_ROLES}):`(~?)([^`<]*)`")


def _role(match: re.Match[str]) -> str:
    target = match.group(2)
    if match.group(1):  # ~a.b.c shows as c
        target = target.rsplit(".", 1)[-1]
    return f"<code>{target}</code>"


def _role_in_code(match: re.Match[str]) -> str:
    target = match.group(2)
    return target.rsplit(".", 1)[-1] if match.group(1) else target


def on_page_content(content: str, page: Any, **kwargs: Any) -> str:
    """Turn arithmatex's TeX spans into MathML and Sphinx roles into plain code."""
    content = _ROLE_IN_CODE.sub(_role_in_code, _ROLE.sub(_role, _MATH.sub(_mathml, content)))
    if 'class="arithmatex"' in content:  # a warning fails the strict build
        log.warning("%s: maths that could not be converted to MathML", page.file.src_uri)
    return content
