"""The documentation site: its configuration, and every built page in headless Chromium.

Fast tests (default suite) check ``mkdocs.yml`` (strict mode, every nav page exists, no
page left out of the nav), that the generated API reference covers ``alliance_models.__all__``
with names that resolve, and that the in-browser probe can detect a broken page.

The site check (``slow``: it builds the site, which executes the tutorials) serves
``site/`` on a localhost port and opens every page in Chromium. A probe script injected
into each HTML response by the test server records uncaught errors, ``console.error``
calls, failed resource loads and every ``<img>`` that did not load
(``complete && naturalWidth > 0``) on ``<body>``; ``--dump-dom`` prints the DOM after the
page's scripts ran. The server also records every request it answered with an error.
``make docs-check`` builds ``site/`` and runs it with ``ALLIANCE_DOCS_SITE=site``.
"""

from __future__ import annotations

import functools
import html
import importlib.util
import logging
import os
import re
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

import alliance_models as am
from chromium_run import CHROMIUM, run_chromium

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is missing")

PROBE = """<script id="docs-probe">
(function () {
  var errors = [];
  function note(msg) { errors.push(String(msg).replace(/[|"<>]/g, " ").slice(0, 300)); }
  var consoleError = console.error;
  console.error = function () {
    note("console.error: " + Array.prototype.slice.call(arguments).join(" "));
    return consoleError.apply(console, arguments);
  };
  window.addEventListener("error", function (e) {
    var t = e.target;
    if (t && t !== window && (t.src || t.href)) { note("failed to load " + (t.src || t.href)); }
    else { note("uncaught: " + e.message); }
  }, true);
  window.addEventListener("unhandledrejection", function (e) { note("rejection: " + e.reason); });
  window.addEventListener("load", function () {
    setTimeout(function () {
      var imgs = Array.prototype.slice.call(document.images);
      var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
      var b = document.body;
      b.setAttribute("data-probe-images", String(imgs.length));
      b.setAttribute("data-probe-broken", broken.map(function (i) {
        return i.alt || i.src.slice(0, 80); }).join("|"));
      b.setAttribute("data-probe-errors", errors.join("|"));
      b.setAttribute("data-probe-done", "yes");
    }, 1000);
  });
})();
</script>"""


# ------------------------------------------------------------------------- configuration
def _config() -> dict:
    class Loader(yaml.SafeLoader):
        pass

    # mkdocs.yml may use !!python/name tags (pymdownx options); read them as plain text
    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
    return yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)


def _nav_files(nav) -> list[str]:
    out: list[str] = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out += _nav_files(value) if isinstance(value, list) else [value]
    return out


def _hooks():
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "scripts/mkdocs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_is_strict_and_every_nav_page_exists():
    cfg = _config()
    assert cfg["strict"] is True
    assert cfg["site_dir"] == "site" and cfg["docs_dir"] == "docs"
    assert cfg["theme"]["font"] is False  # no web fonts fetched when a page is viewed
    pages = _nav_files(cfg["nav"])
    assert len(pages) == len(set(pages))
    for page in pages:
        assert (DOCS / page).is_file(), f"nav names missing docs/{page}"
    excluded = set(cfg.get("exclude_docs", "").split())
    left_out = {p.name for p in DOCS.glob("*.md")} - set(pages) - excluded
    assert not left_out, f"pages not in the nav: {sorted(left_out)}"
    for hook in cfg["hooks"]:
        assert (ROOT / hook).is_file()


def test_every_page_has_a_title_and_tutorials_are_executed():
    for page in _nav_files(_config()["nav"]):
        text = (DOCS / page).read_text()
        included = re.match(r'--8<-- "(docs/[\w.-]+)"', text)  # a page that includes another
        if included:
            text = (ROOT / included.group(1)).read_text()
        assert text.startswith("# "), page
    for page in ("tutorial-analyst.md", "tutorial-trialist.md", "tutorial-library.md"):
        text = (DOCS / page).read_text()
        assert text.count('exec="on"') >= 5, f"{page} is not executed at build time"


def test_api_reference_lists_every_public_name():
    hooks = _hooks()
    listed = [n for names in hooks.sections().values() for n in names]
    assert sorted(listed) == sorted(am.__all__)
    assert len(listed) == len(set(listed))
    body = hooks.api_markdown()
    for name in am.__all__:
        path, kind = hooks.resolve(name)
        assert f'heading: "am.{name}"' in body
        assert path.startswith("alliance_models.")
        assert kind in ("function", "class", "module")
    # the page source names no internal module: it is generated from the public names
    assert "::: " not in (DOCS / "api.md").read_text()
    assert hooks.MARKER in (DOCS / "api.md").read_text()
    # a callable module (am.report) is documented as its function; am.datasets as a module
    assert hooks.resolve("report")[1] == "function"
    assert hooks.resolve("datasets") == ("alliance_models.datasets", "module")


def _griffe_warnings(caplog, objects) -> list[str]:
    """Parse the numpydoc docstrings of ``objects`` as mkdocstrings does; return warnings."""
    import griffe

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="griffe"):
        for obj in objects:
            if obj.docstring is not None:
                obj.docstring.parse(griffe.Parser.numpy)
    return [r.getMessage() for r in caplog.records if r.name.startswith("griffe")]


def test_public_docstrings_render_without_warnings(caplog):
    """What the strict build checks on the API page, in a second (no tutorials run)."""
    griffe = pytest.importorskip("griffe")
    hooks = _hooks()
    loader = griffe.GriffeLoader(search_paths=[str(ROOT / "src")])
    package = loader.load("alliance_models")
    objects = []
    for name in am.__all__:
        path, _ = hooks.resolve(name)
        obj = package[path.removeprefix("alliance_models.")]
        objects.append(obj)
        if obj.is_class or obj.is_module:  # members rendered on the page (filters "!^_")
            objects += [m for n, m in obj.members.items()
                        if not n.startswith("_") and not m.is_alias]
    assert len(objects) > len(am.__all__)
    assert _griffe_warnings(caplog, objects) == []
    # the check can fail: a parameter the signature does not have
    bad = griffe.Docstring("Summary.\n\nParameters\n----------\nnot_a_param : int\n    No.\n",
                           parent=package["parse_formula"])
    holder = type("Holder", (), {"docstring": bad})
    assert any("not_a_param" in w for w in _griffe_warnings(caplog, [holder]))


def test_sphinx_roles_and_maths_are_converted():
    pytest.importorskip("latex2mathml")
    hooks = _hooks()

    class Page:
        class file:  # noqa: N801
            src_uri = "x.md"

    out = hooks.on_page_content(
        'see :func:<code>~alliance_models.fit_mixed</code> and '
        ':class:<code>alliance_models.Design</code>; <code>as in :func:`~a.simple_slopes`</code>'
        '<span class="arithmatex">\\(\\hat\\beta &lt; 1\\)</span>', Page)
    assert "<code>fit_mixed</code>" in out and "<code>alliance_models.Design</code>" in out
    assert "<code>as in simple_slopes</code>" in out
    assert "<math" in out and "arithmatex" not in out and ":func:" not in out


# ------------------------------------------------------------------------- browser check
class _Handler(SimpleHTTPRequestHandler):
    """Serves a directory, injects the probe into HTML and records failed requests."""

    failures: list[str]

    def log_message(self, format, *args):  # noqa: A002 - keep the server quiet
        pass

    def send_error(self, code, message=None, explain=None):
        if self.path != "/favicon.ico":  # Chromium asks for it on its own
            self.failures.append(f"{code} {self.path}")
        super().send_error(code, message, explain)

    def do_GET(self):  # noqa: N802
        path = Path(self.translate_path(self.path))
        if path.is_dir():
            path = path / "index.html"
        if path.suffix == ".html" and path.is_file():
            body = path.read_text(encoding="utf-8")
            body = re.sub(r"<head([^>]*)>", lambda m: m.group(0) + PROBE, body, count=1)
            data = body.encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        super().do_GET()


@pytest.fixture
def serve():
    servers = []

    def start(directory: Path) -> tuple[str, list[str]]:
        failures: list[str] = []
        handler = type("Handler", (_Handler,), {"failures": failures})
        server = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", failures

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def probe(url: str, profile: Path) -> dict[str, str]:
    """Open ``url`` in headless Chromium; return the probe's findings and console errors."""
    proc = run_chromium(url, profile, "--enable-logging=stderr", "--v=0",
                        "--virtual-time-budget=15000", "--dump-dom", timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", proc.stdout)
    assert body, proc.stdout[:2000]
    found = {k: html.unescape(v) for k, v in re.findall(r'data-probe-(\w+)="([^"]*)"',
                                                         body.group(1))}
    # messages the page logged with console.error / uncaught errors, as Chromium logs them
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line and any(
        word in line for word in ("ERROR", "Uncaught", "Failed to load"))]
    found["console"] = "|".join(console)
    return found


@pytest.mark.browser
@needs_chromium
def test_probe_detects_a_broken_page(tmp_path, serve):
    # the check must be able to fail: a broken image, a missing script, a JS error
    (tmp_path / "ok.png").write_bytes(_tiny_png())
    (tmp_path / "bad.html").write_text(
        '<!doctype html><html><head><title>t</title></head><body>'
        '<img src="ok.png" alt="fine"><img src="data:image/png;base64,AAAA" alt="broken one">'
        '<img src="missing.png" alt="missing one"><script src="nope.js"></script>'
        '<script>console.error("boom"); undefinedFunction();</script></body></html>')
    (tmp_path / "good.html").write_text(
        '<!doctype html><html><head><title>t</title></head><body>'
        '<img src="ok.png" alt="fine"></body></html>')
    base, failures = serve(tmp_path)
    bad = probe(f"{base}/bad.html", tmp_path / "profile")
    assert bad["done"] == "yes"
    assert bad["images"] == "3"
    assert bad["broken"].split("|") == ["broken one", "missing one"]
    assert "console.error: boom" in bad["errors"]
    assert "undefinedFunction" in bad["errors"]
    assert "nope.js" in bad["errors"]
    assert sorted(failures) == ["404 /missing.png", "404 /nope.js"]
    assert "undefinedFunction" in bad["console"]  # Chromium's own console log is read too
    good = probe(f"{base}/good.html", tmp_path / "profile")
    assert (good["images"], good["broken"], good["errors"]) == ("1", "", "")


def _tiny_png() -> bytes:
    import io

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The built site: ``$ALLIANCE_DOCS_SITE`` if set (``make docs-check``), else built here."""
    given = os.environ.get("ALLIANCE_DOCS_SITE")
    if given:
        path = Path(given)
        if not path.is_absolute():
            path = ROOT / path
        assert (path / "index.html").is_file(), f"no built site in {path}"
        return path
    pytest.importorskip("mkdocs")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=1200, check=False, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return out


@pytest.mark.slow
@pytest.mark.browser
@needs_chromium
def test_every_page_loads_in_chromium(site, tmp_path, serve):
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html"))
    expected = {Path(p).with_suffix(".html").as_posix() for p in _nav_files(_config()["nav"])}
    assert expected <= set(pages), f"nav pages not built: {sorted(expected - set(pages))}"
    base, failures = serve(site)
    images = {}
    for i, page in enumerate(pages):
        found = probe(f"{base}/{page}", tmp_path / f"profile{i}")
        assert found.get("done") == "yes", f"{page}: the probe did not run"
        assert found["errors"] == "", f"{page}: {found['errors']}"
        assert found["console"] == "", f"{page}: {found['console']}"
        assert found["broken"] == "", f"{page}: images that did not load: {found['broken']}"
        images[page] = int(found["images"])
    assert failures == [], f"requests that failed: {failures}"
    # the executed tutorials carry their plots as real images
    assert images["tutorial-analyst.html"] >= 2
    assert images["tutorial-trialist.html"] >= 1
