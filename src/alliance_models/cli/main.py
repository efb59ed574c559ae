"""The ``alliance-models`` command line.

Subcommands: ``demo`` (the whole analysis on the shipped example data), ``fit`` (a
moderation model on your data, optionally probed and reported), ``score`` (questionnaire
scoring) and ``power`` (a planned trial described in a TOML file).

Bad input ends the command with exit status 1 and a one-line message on stderr (no
traceback); ``--debug`` shows the traceback instead. Usage errors exit with status 2.
Progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .console import PROG, Console, compact_warnings, one_line

__all__ = ["main", "build_parser"]



def _error_line(exc: BaseException) -> str:
    from ..errors import AllianceModelsError

    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"file not found: {exc.filename}"
    if isinstance(exc, IsADirectoryError) and exc.filename:
        return f"expected a file but got a directory: {exc.filename}"
    if isinstance(exc, PermissionError) and exc.filename:
        return f"permission denied: {exc.filename}"
    msg = one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, AllianceModelsError | ValueError | KeyError | OSError | ImportError):
        return f"{type(exc).__name__}: {msg}"
    return f"unexpected {type(exc).__name__}: {msg} (run with --debug for the traceback)"


# --------------------------------------------------------------------------- commands


def _check_out_dir(path: str | None, command: str, option: str) -> None:
    """Stop before any work when the report directory is an existing file."""
    if path is None:
        return
    p = Path(path)
    if p.suffix.lower() in {".html", ".htm"}:
        if p.is_dir():
            raise SystemExit(_usage_error(command, f"{option} {p}: is a directory, not an "
                                          "HTML file"))
        return
    if p.exists() and not p.is_dir():
        raise SystemExit(_usage_error(
            command, f"{option} {p}: exists and is not a directory (give a directory for "
            "index.html, or a path ending in .html)"))


def _cmd_demo(args: argparse.Namespace, console: Console) -> int:
    from .demo import run_demo

    _check_out_dir(args.out, "demo", "--out")

    out = run_demo(
        args.out,
        quick=args.quick,
        bayes=not args.no_bayes,
        power=not args.no_power,
        seed=args.seed,
        console=console,
    )
    console.print()
    console.print(f"Report written to {out}")
    return 0


def _read(path: str, console: Console) -> Any:
    import alliance_models as am

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(2, "No such file or directory", str(p))
    with console.timed(f"reading {p}"):
        return am.read_data(p)


def _score_kwargs(args: argparse.Namespace, command: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"return_report": True}
    if args.prorate:
        kwargs["prorate"] = True
        if args.max_missing is not None:
            mm = args.max_missing
            kwargs["max_missing"] = int(mm) if float(mm).is_integer() and mm >= 1 else mm
    elif args.max_missing is not None:
        raise SystemExit(_usage_error(command, "--max-missing is used with --prorate only"))
    return kwargs


def _score_all(
    df: Any, pairs: list[tuple[str, str]], kwargs: dict[str, Any], console: Console
) -> tuple[Any, list[Any]]:
    """Score each (instrument, item pattern) in turn; print each ScoringReport."""
    import alliance_models as am

    reports = []
    for instrument, items in pairs:
        with console.timed(f"scoring {instrument} from {items}"):
            df, rep = am.score(df, instrument, items=items, **kwargs)
        reports.append(rep)
        console.heading(f"{instrument}: {len(df)} rows scored")
        console.print(rep.summary())
        new = list(rep.columns)
        desc = df[new].describe().T
        desc.insert(0, "missing", df[new].isna().sum())
        console.print()
        console.print(desc.to_string(float_format=lambda x: f"{x:.3f}"))
    return df, reports


def _cmd_score(args: argparse.Namespace, console: Console) -> int:
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() not in {".csv", ".txt", "", ".xlsx", ".parquet"}:
        raise SystemExit(
            _usage_error("score", f"--out {out.name}: use a .csv, .xlsx or .parquet file")
        )
    if len(args.instrument) != len(args.items):
        raise SystemExit(_usage_error(
            "score", f"give one --items per --instrument (got {len(args.instrument)} "
            f"instrument(s) and {len(args.items)} --items)"))
    kwargs = _score_kwargs(args, "score")
    df = _read(args.data, console)
    scored, _ = _score_all(df, list(zip(args.instrument, args.items, strict=True)), kwargs,
                           console)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        suffix = out.suffix.lower()
        if suffix == ".xlsx":
            scored.to_excel(out, index=False)
        elif suffix == ".parquet":
            scored.to_parquet(out, index=False)
        else:
            scored.to_csv(out, index=False)
        console.print()
        console.print(f"Scored data written to {out}")
    return 0


def _score_pairs(values: list[str] | None) -> list[tuple[str, str]]:
    pairs = []
    for v in values or []:
        instrument, sep, items = v.partition("=")
        if not sep or not instrument.strip() or not items.strip():
            raise SystemExit(_usage_error(
                "fit", f"--score {v!r}: write INSTRUMENT=PATTERN, e.g. --score 'wai-sr=wai_{{i}}'"))
        pairs.append((instrument.strip(), items.strip()))
    return pairs


def _parse_at(text: str) -> str | list[float]:
    if text in ("meansd", "percentiles"):
        return text
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(_usage_error(
            "fit", f"--at {text!r}: use meansd, percentiles or numbers such as 30,50,70"
        )) from None


def _moderators(args: argparse.Namespace) -> list[str]:
    return list(args.moderator or [])


def _cmd_fit(args: argparse.Namespace, console: Console) -> int:
    import alliance_models as am

    from ..reporting.html import report

    mods = _moderators(args)
    if bool(args.focal) != bool(mods):
        raise SystemExit(
            _usage_error("fit", "--focal and --moderator go together (give both or neither)")
        )
    glmm = args.method == "mixed" and args.family in ("binomial", "poisson")
    if args.trials and args.method != "gee" and not args.bayes and not (
            glmm and args.family == "binomial"):
        raise SystemExit(_usage_error(
            "fit", "--trials is used with --family binomial (mixed), --method gee or --bayes only"))
    if args.family == "poisson" and (args.method != "mixed" or args.bayes):
        raise SystemExit(_usage_error("fit", "--family poisson is fitted by --method mixed only"))
    at = _parse_at(args.at)
    pairs = _score_pairs(args.score)
    if pairs and not args.prepare:
        raise SystemExit(_usage_error("fit", "--score needs --prepare (scores feed am.prepare)"))
    score_kwargs = _score_kwargs(args, "fit")
    _check_out_dir(args.report, "fit", "--report")
    data = _read(args.data, console)
    data_report = None
    scoring: list[Any] = []
    if pairs:
        data, scoring = _score_all(data, pairs, score_kwargs, console)
    if args.prepare:
        with console.timed("validating and preparing the data"):
            data, data_report = am.prepare(data, adherence=args.adherence,
                                           scoring=scoring or None)
        console.heading("Data preparation")
        console.print(data_report.summary())

    fitters = {"mixed": am.fit_mixed, "ols": am.fit_ols, "gee": am.fit_gee}
    kwargs: dict[str, Any] = {}
    if args.method == "gee" or glmm:
        if args.trials:
            kwargs["trials"] = args.trials
        if args.family:
            kwargs["family"] = args.family
    if glmm and args.nagq != 1:
        kwargs["nAGQ"] = args.nagq
    if args.ddf != "satterthwaite":
        if args.method != "mixed" or glmm:
            raise SystemExit(_usage_error("fit", f"--ddf {args.ddf} applies to gaussian "
                                          "mixed models (--method mixed) only"))
        kwargs["ddf"] = args.ddf
    _check_numeric_columns(data, args.formula)
    what = f"{args.family} mixed" if glmm else args.method
    with console.timed(f"fitting the {what} model"):
        fit = fitters[args.method](args.formula, data, **kwargs)
    console.heading(f"{what} model: {args.formula}")
    console.print(fit.summary(exp=True) if glmm else fit.summary())

    slopes, jns = _probe(fit, args.focal, mods, console, at=at, over=args.over)
    if glmm and args.focal:
        rslopes, rjns = _probe(fit, args.focal, mods, console, at=at, over=args.over,
                               scale="response")
        slopes += rslopes
        jns += rjns

    bfit = None
    if args.bayes:
        # the sampler's own progress bar on a terminal (MCMC is the long step)
        bkw: dict[str, Any] = {"draws": args.draws, "chains": args.chains, "seed": args.seed,
                               "progressbar": console.live}
        if args.tune is not None:
            bkw["tune"] = args.tune
        if args.family:
            bkw["family"] = args.family
        if args.trials:
            bkw["trials"] = args.trials
        with console.timed(f"sampling the Bayesian model ({args.chains} chains x {args.draws})"):
            bfit = am.fit_bayes(args.formula, data, **bkw)
        console.heading("Bayesian model")
        console.print(bfit.summary())
        if args.focal:
            bslopes, _ = _probe(bfit, args.focal, mods, console, label="posterior ", at=at,
                                over=args.over)
            slopes += bslopes

    if args.report:
        with console.timed("writing the HTML report"):
            out = report(
                args.report,
                data=data,
                data_report=data_report,
                fit=fit,
                slopes=slopes or None,
                jn=jns or None,
                bayes=bfit,
                title=f"Moderation analysis of {Path(args.data).name}",
                notes=f"Formula: {args.formula} (method: {args.method}).",
            )
        console.print()
        console.print(f"Report written to {out}")
    return 0


def _check_numeric_columns(data: Any, formula: str) -> None:
    """Name a typo in a numeric column before any work (see ``ModelSpec.check_numeric_text``)."""
    from ..formula import parse_formula

    parse_formula(formula).check_numeric_text(data)


def _probe(
    fit: Any, focal: str | None, moderators: list[str], console: Console, label: str = "",
    at: str | list[float] = "meansd", over: str = "rows", scale: str = "link",
) -> tuple[list[Any], list[Any]]:
    import alliance_models as am

    slopes: list[Any] = []
    jns: list[Any] = []
    if not focal:
        return slopes, jns
    for mod in moderators:
        s = am.simple_slopes(fit, focal=focal, moderator=mod, at=at, over=over,
                             scale=scale)
        if isinstance(at, str):
            shown = {"meansd": "mean +/- 1 SD", "percentiles": "percentiles"}[at]
            shown += f" over {over}" if over != "rows" else ""
        else:
            shown = ", ".join(f"{v:g}" for v in at)
        on = " (probability scale)" if scale == "response" else ""
        console.heading(f"{label}simple slopes of {focal} at {mod} ({shown}){on}")
        console.print(s.summary())
        slopes.append(s)
        j = am.johnson_neyman(fit, focal=focal, moderator=mod, scale=scale)
        console.heading(f"{label}Johnson-Neyman: {focal} by {mod}{on}")
        console.print(j.summary())
        jns.append(j)
    return slopes, jns


def _cmd_power(args: argparse.Namespace, console: Console) -> int:
    path = Path(args.design)
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    from ..planning.results import PowerCurve
    from .power_file import run_power_file

    plot_path = Path(args.plot) if args.plot else path.with_suffix(".png")
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    with console.timed(f"running the power analysis in {path}"):
        result = run_power_file(path, out=plot_path)
    console.heading(f"Power: {path.name}")
    console.print(result.summary())
    if isinstance(result, PowerCurve):
        console.print()
        console.print(f"Power curve written to {plot_path}")
    elif args.plot:
        console.step(f"{path.name} has no [curve] table, so there is no curve to plot")
    return 0


# --------------------------------------------------------------------------- parser

_MAIN_EPILOG = """\
examples:
  alliance-models demo                       # whole analysis on the shipped example data
  alliance-models score export.csv --instrument wai-sr --items 'wai_{i}' --out scored.csv
  alliance-models fit data.csv --formula 'adherence ~ alliance * age_c + (1 | therapist)'
  alliance-models power design.toml --plot power.png

Run 'alliance-models COMMAND --help' for a worked example of each command.
"""

_DEMO_EPILOG = """\
worked example:
  alliance-models demo --out alliance_report
      reads the shipped REDCap-style example export, scores the WAI-SR and HCCQ-6,
      validates and centres the data (printing the DataReport), fits
        adherence ~ alliance * (age_c + autonomy_c) + (1 | therapist/patient)
      by REML with Satterthwaite df, probes the alliance effect at age and autonomy
      support (simple slopes, Johnson-Neyman), fits the same model in PyMC, runs a short
      power curve and writes alliance_report/index.html.
  alliance-models demo --quick --no-bayes    # a fast smoke run (seconds)
"""

_FIT_EPILOG = """\
worked example:
  alliance-models fit sessions.csv \\
      --formula 'adherence ~ alliance * (age_c + autonomy_c) + (1 | therapist/patient)' \\
      --focal alliance --moderator age_c --moderator autonomy_c --report out/

  DATA is one row per session with the canonical columns (therapist, patient, session,
  alliance, age, autonomy, adherence, ...) as am.prepare() writes them in Python; or a
  questionnaire export with --score and --prepare, which score the items, validate,
  compute adherence and centre (age_c, autonomy_c), printing the DataReport. From a raw
  REDCap export (repeating session forms, baseline HCCQ):
    alliance-models fit export.csv --score 'wai-sr=wai_{i}' --score 'hccq-short=hccq_{i}' \\
        --prorate --prepare --formula 'adherence ~ alliance * age_c + (1 | therapist/patient)'
  (adherence = completed / prescribed home exercises; with --adherence attendance the
  session outcome is attended 0/1: use --family binomial --trials scheduled)

  --family binomial --trials scheduled fits the binomial mixed model (lme4's glmer,
  Laplace; --nagq 9 for adaptive quadrature with one random intercept) to attended out of
  scheduled, prints odds ratios and probes on the logit and the probability scale:
    alliance-models fit patients.csv --family binomial --trials scheduled \\
        --formula 'attended ~ alliance * autonomy_c + (1 | therapist/patient)' \\
        --focal alliance --moderator autonomy_c
  --family poisson fits counts (log link).

  --method ols fits a single-level PROCESS-style model (robust HC3 SEs);
  --method gee --trials scheduled fits attended/scheduled as binomial with logit link.
  --bayes adds the same model in PyMC (posterior summary with r_hat and ESS).
"""

_SCORE_EPILOG = """\
worked example:
  alliance-models score export.csv --instrument wai-sr --items 'wai_{i}' --out scored.csv

  adds wai_sr_total and the goal/task/bond subscales from columns wai_1 ... wai_12
  ('{i}' stands for the item number) and prints how many rows were scored, pro-rated
  or left missing and why. Other instruments: wai, wai-s, hccq, hccq-short, ears,
  siras. Item values outside the instrument's range are reported with their rows.
  alliance-models score export.csv --instrument wai-sr --items 'wai_{i}' \\
      --instrument hccq-short --items 'hccq_{i}' --prorate --max-missing 1 --out scored.xlsx
"""

_POWER_EPILOG = """\
worked example:
  alliance-models power design.toml --plot power.png

  with design.toml such as

    [design]
    therapists = 40
    patients_per_therapist = 10
    sessions = 8
    [design.effects]
    alliance = 0.25
    "alliance:autonomy" = 0.10

    [analysis]
    formula = "adherence ~ alliance * autonomy + (1 | therapist/patient)"
    test = "alliance:autonomy"
    n_sims = 500
    seed = 1

    [curve]                       # optional: a power curve instead of one point
    vary = { therapists = [20, 30, 40, 60] }

  prints power with its Wilson CI and the diagnosands (bias, RMSE, coverage, ...) per
  design and, with [curve], writes the curve plot (default: design.png next to the file).
  [analysis] also takes method, alpha, n_jobs, backend ("loky" or "dask") and checkpoint;
  test = ["alliance:age", "alliance:autonomy"] tests several coefficients together, with
  correction = "holm" (or "bonferroni", "bh"), and reports per-test and all / any power.
"""


def _seed(text: str) -> int:
    """Argparse type of ``--seed``: a non-negative integer (what numpy's seeding takes)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer")
    return value


def _usage_error(command: str, message: str) -> str:
    return f"{PROG} {command}: error: {message}"


def _add_prorate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prorate", action="store_true",
                   help="pro-rate scores with a few missing items (mean of answered items)")
    p.add_argument("--max-missing", type=float, default=None, metavar="N",
                   help="with --prorate: missing items allowed per subscale, a count (1, 2, "
                   "...) or a fraction below 1 (default 1 item)")


def build_parser() -> argparse.ArgumentParser:
    """Build the ``alliance-models`` argument parser.

    Returns
    -------
    argparse.ArgumentParser
        The parser with the ``demo``, ``fit``, ``score`` and ``power`` subcommands.

    Examples
    --------
    >>> args = build_parser().parse_args(["demo", "--quick"])
    >>> args.command, args.quick
    ('demo', True)
    """
    from .. import __version__

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS,
        help="show the full traceback and raw warnings on errors",
    )
    common.add_argument(
        "--quiet", "-q", action="store_true", default=argparse.SUPPRESS,
        help="no progress messages on stderr",
    )
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Therapeutic alliance -> adherence moderation models: scoring, mixed / "
        "OLS / GEE / Bayesian fits, probing, power for planned trials, HTML reports.",
        epilog=_MAIN_EPILOG,
        formatter_class=fmt,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "demo", parents=[common], formatter_class=fmt, epilog=_DEMO_EPILOG,
        help="run the whole analysis on the shipped example data and write a report",
        description="Run the whole analysis on the shipped example data.",
    )
    p.add_argument("--out", default="alliance_report", metavar="DIR",
                   help="directory for index.html (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="small settings (fewer draws and power replicates) for a fast run")
    p.add_argument("--no-bayes", action="store_true", help="skip the Bayesian fit")
    p.add_argument("--no-power", action="store_true", help="skip the power curve")
    p.add_argument("--seed", type=_seed, default=1,
                   help="seed for MCMC and power, an integer >= 0 (default 1)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "fit", parents=[common], formatter_class=fmt, epilog=_FIT_EPILOG,
        help="fit a moderation model to a data file",
        description="Fit a moderation model (lme4-style formula) to a data file.",
    )
    p.add_argument("data", metavar="DATA", help="CSV, Excel, SPSS .sav, Stata .dta or REDCap")
    p.add_argument("--formula", required=True,
                   help="lme4-style formula, e.g. 'adherence ~ alliance * age + (1 | therapist)'")
    p.add_argument("--method", choices=("mixed", "ols", "gee"), default="mixed",
                   help="frequentist backend (default: %(default)s)")
    p.add_argument("--trials", metavar="COLUMN",
                   help="denominator column of a binomial outcome (mixed with --family "
                   "binomial, gee, bayes); the response holds the successes")
    p.add_argument("--nagq", type=int, default=1, metavar="K",
                   help="binomial/poisson mixed models: 1 = Laplace (default), more = "
                   "adaptive Gauss-Hermite quadrature nodes (one random intercept)")
    p.add_argument("--ddf", choices=("satterthwaite", "kenward-roger"), default="satterthwaite",
                   help="gaussian mixed models: denominator df for t and F tests, simple "
                   "slopes and Johnson-Neyman (default: %(default)s; kenward-roger also "
                   "adjusts the SEs, as pbkrtest)")
    p.add_argument("--score", metavar="INSTRUMENT=PATTERN", action="append",
                   help="score a questionnaire first, e.g. 'wai-sr=wai_{i}' (repeatable; "
                   "needs --prepare)")
    _add_prorate(p)
    p.add_argument("--prepare", action="store_true",
                   help="validate, reshape and centre the data with am.prepare() first")
    p.add_argument("--adherence", default="diary", metavar="KIND",
                   help="with --prepare: 'diary' (completed/prescribed), 'attendance' "
                   "(attended/scheduled) or a column with a continuous score (default diary)")
    p.add_argument("--focal", metavar="TERM", help="focal predictor to probe, e.g. alliance")
    p.add_argument("--moderator", metavar="TERM", action="append",
                   help="moderator to probe (repeat for several)")
    p.add_argument("--at", default="meansd", metavar="VALUES",
                   help="moderator values for simple slopes: meansd (default), percentiles "
                   "or a comma-separated list such as -10,0,10")
    p.add_argument("--over", default="rows", metavar="UNITS",
                   help="whose distribution meansd/percentiles describe: rows (every session, "
                   "default) or a column such as patient (one value per patient, as "
                   "--prepare centres patient-level moderators)")
    p.add_argument("--bayes", action="store_true", help="also fit the model in PyMC")
    p.add_argument("--family", choices=("gaussian", "binomial", "beta_binomial", "poisson"),
                   help="outcome family: mixed takes gaussian (default), binomial (with "
                   "--trials) or poisson; gee takes binomial (default) or gaussian; --bayes "
                   "takes gaussian (default), binomial or beta_binomial")
    p.add_argument("--draws", type=int, default=1000, help="MCMC draws per chain")
    p.add_argument("--tune", type=int, default=None, help="MCMC tuning steps per chain")
    p.add_argument("--chains", type=int, default=4, help="MCMC chains (default 4)")
    p.add_argument("--seed", type=_seed, default=1, help="MCMC seed, an integer >= 0 "
                   "(default 1)")
    p.add_argument("--report", metavar="DIR", help="write DIR/index.html")
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser(
        "score", parents=[common], formatter_class=fmt, epilog=_SCORE_EPILOG,
        help="score a questionnaire (totals and subscales)",
        description="Score a questionnaire in a data file.",
    )
    p.add_argument("data", metavar="DATA", help="CSV, Excel, SPSS .sav, Stata .dta or REDCap")
    p.add_argument("--instrument", required=True, action="append",
                   help="e.g. wai-sr, wai-s, hccq-short, ears (repeat with --items for more)")
    p.add_argument("--items", required=True, metavar="PATTERN", action="append",
                   help="item column pattern with {i} for the item number, e.g. 'wai_{i}'")
    _add_prorate(p)
    p.add_argument("--out", metavar="FILE",
                   help="write the scored data (.csv, .xlsx or .parquet)")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser(
        "power", parents=[common], formatter_class=fmt, epilog=_POWER_EPILOG,
        help="power of a planned trial described in a TOML file",
        description="Simulation-based power for a planned trial described in a TOML file.",
    )
    p.add_argument("design", metavar="DESIGN.toml", help="design and power settings")
    p.add_argument("--plot", metavar="FILE",
                   help="where to write the power-curve PNG (default: next to the TOML)")
    p.set_defaults(func=_cmd_power)
    return parser


# --------------------------------------------------------------------------- entry point


def main(
    argv: Sequence[str] | None = None, *, stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run the ``alliance-models`` command.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).
    stdout, stderr : text streams, optional
        Where results and progress/errors go (default: the process streams).

    Returns
    -------
    int
        Exit status: 0 on success, 1 on an error in the input or the analysis, 2 on a
        usage error, 130 when interrupted.

    Examples
    --------
    >>> import io
    >>> err = io.StringIO()
    >>> main(["fit", "no_such_file.csv", "--formula", "y ~ x"], stderr=err)
    1
    >>> err.getvalue().strip()
    'alliance-models: error: file not found: no_such_file.csv'
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    console = Console(stdout, stderr)
    parser = build_parser()
    try:
        with contextlib.redirect_stdout(console.out), contextlib.redirect_stderr(console.err):
            args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help / --version (0) or usage error (2)
        return int(exc.code or 0)
    debug = bool(getattr(args, "debug", False))
    console.quiet = bool(getattr(args, "quiet", False))
    try:
        with compact_warnings(console, debug):
            return int(args.func(args, console))
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{PROG}: interrupted", file=console.err)
        return 130
    except SystemExit as exc:  # usage errors raised inside commands
        if isinstance(exc.code, str):
            print(exc.code, file=console.err)
            return 2
        return int(exc.code or 0)
    except Exception as exc:
        if debug:
            raise
        print(f"{PROG}: error: {_error_line(exc)}", file=console.err, flush=True)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
