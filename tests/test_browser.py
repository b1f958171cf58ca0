"""The rendered book, read as a reader reads it: every built page opened in headless Chromium.

The book is built once per test run (the ``book_build`` fixture of ``conftest.py``, shared with the strict-build
test of ``test_book.py``; ``BOOK_HTML=path/to/html`` checks a build made earlier instead), served on 127.0.0.1
by a ``http.server`` thread, and every page is opened with Selenium driving Debian's ``chromium`` +
``chromium-driver``. For each page:

* no JavaScript error in the console (level SEVERE); the only errors forgiven are failures to load a
  resource from another host, because this machine is offline (see ``OFFLINE_ERROR``): a failure of a
  resource served by the book itself is an error;
* MathJax typeset every formula: ``MathJax.startup.promise`` resolves, every ``.math`` element holds an
  ``mjx-container``, no ``mjx-merror`` / ``.MathJax_Error`` element, no formula whose MathML carries an
  ``merror`` or the red text that MathJax's ``noundefined`` package puts in place of an unknown macro,
  and a page whose source has display math shows at least one display formula;
* every image loaded (``naturalWidth > 0``), and a notebook that calls ``plt.show()`` stores figures;
* every saved widget view rendered (its ``.widget-subarea`` holds ``.widget-*`` / ``.jupyter-widgets``
  elements);
* every internal link resolves: a local file that exists, and an anchor that exists in the target page;
* a chapter page links to Colab at exactly that notebook's path on the repository of ``_config.yml``, and no
  other Colab link;
* on a page of the toc, nothing a reader must scroll sideways to read, and nothing shrunk into illegibility
  (``LAYOUT_REPORT``; each failure names the page, the cell and the line): no stderr block longer than
  ``MAX_STDERR_LINES`` lines, no code block or output wider than its column (``scrollWidth > clientWidth``
  in the 1280 px wide window: 90 characters of code fit, see ``book/_static/css/book.css``), and no image
  rendered below ``MIN_IMAGE_SCALE`` of the width it asks for (a retina figure asks for half its pixel width,
  so a sharp figure at the page's width passes and a large low-resolution one scaled down fails).

Screenshots of a few pages are taken on every run (each must be a readable PNG under 300 KB) and written to
``book/_static/screenshots/`` (the README shows two) only when asked, ``UPDATE_SCREENSHOTS=1``, so a test run
never rewrites tracked files.

Without a browser the tests skip, with a message, on a developer's machine; with ``CI`` set they fail.
"""
import functools
import html.parser
import http.server
import json
import os
import re
import runpy
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPO = runpy.run_path(str(ROOT / "book" / "set_repository_url.py"))  # the repository named in _config.yml
MAX_STDERR_LINES = 20
MIN_IMAGE_SCALE = 0.6
SCREENSHOTS = ROOT / "book" / "_static" / "screenshots"
MAX_SCREENSHOT_BYTES = 300_000
# The machine is offline: a resource of another host (a CDN) cannot load. Chromium reports that as
# "<url> - Failed to load resource: net::ERR_..." at level SEVERE; such lines are forgiven, and only such.
OFFLINE_ERROR = re.compile(r"^(?P<url>\S+) .*Failed to load resource: net::ERR_")
# Chromium asks every site for /favicon.ico by itself; no page references it, so its 404 is not the book's.
FAVICON_404 = re.compile(r"^\S+/favicon\.ico - Failed to load resource: the server responded with a status of 404")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,900", "--hide-scrollbars"]
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@functools.lru_cache(maxsize=None)
def toc_docnames():
    """Documents of _toc.yml (root and every ``file:``), known before the build: one test each."""
    text = (ROOT / "_toc.yml").read_text()
    names = [line.split(":", 1)[1].strip() for line in text.splitlines()
             if line.strip().startswith(("root:", "file:", "- file:"))]
    return [re.sub(r"\.(md|ipynb)$", "", name) for name in names]


def no_browser(reason):
    """Skip on a developer's machine without a browser; fail in CI, where .ci/run installs one."""
    if IN_CI:
        pytest.fail(f"{reason} (CI is set: .ci/run must install chromium, chromium-driver and selenium)")
    pytest.skip(f"{reason}: the browser test needs Debian's chromium + chromium-driver and `pip install selenium`")


def find_browser():
    chromium = os.environ.get("CHROMIUM") or next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    if not chromium or not driver:
        no_browser("no chromium / chromedriver on PATH")
    try:
        import selenium  # noqa: F401
    except ImportError:
        no_browser("selenium is not installed")
    return chromium, driver


# ---------------------------------------------------------------- build and serve


@pytest.fixture(scope="session")
def html_dir(request):
    """The built HTML: ``$BOOK_HTML`` if set (a build made earlier), else the run's shared strict build."""
    if os.environ.get("BOOK_HTML"):
        return Path(os.environ["BOOK_HTML"])
    find_browser()  # no build when the tests are going to skip anyway
    build = request.getfixturevalue("book_build")  # tests/conftest.py; tests/test_book.py checks it is strict
    assert (build.html / "index.html").exists(), f"the book did not build:\n{build.log}"
    return build.html


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def server(html_dir):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(_QuietHandler, directory=str(html_dir)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="session")
def driver(tmp_path_factory):
    chromium, chromedriver = find_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager try to download anything
    drv = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    drv.set_page_load_timeout(60)
    drv.set_script_timeout(60)
    yield drv
    drv.quit()


# ---------------------------------------------------------------- what a page must satisfy


class _Ids(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids = set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key == "id" or (tag == "a" and key == "name"):
                self.ids.add(value)


@functools.lru_cache(maxsize=None)
def anchors(path):
    parser = _Ids()
    parser.feed(Path(path).read_text(errors="replace"))
    return frozenset(parser.ids)


def source_of(docname):
    for suffix in (".ipynb", ".md"):
        path = ROOT / f"{docname}{suffix}"
        if path.exists():
            return path
    return None


def source_facts(docname):
    """From the page's source: does it have display math, does it call plt.show(), does it store figures."""
    path = source_of(docname)
    if path is None:
        return {"display_math": False, "shows_plots": False, "stored_images": 0}
    if path.suffix == ".md":
        text = path.read_text()
        return {"display_math": "$$" in text or "```{math}" in text, "shows_plots": False, "stored_images": 0}
    nb = json.loads(path.read_text())
    markdown = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    code = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    state = json.dumps(nb.get("metadata", {}).get("widgets", {}))
    images = sum(1 for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
                 if "image/png" in o.get("data", {}) or "image/svg+xml" in o.get("data", {}))
    return {"display_math": "$$" in markdown or "{math}" in markdown or "\\begin{" in markdown,
            "shows_plots": "plt.show()" in code,
            "stored_images": images + state.count('"image/png"')}


WAIT_MATHJAX = """
const done = arguments[arguments.length - 1];
if (!window.MathJax) { done("absent"); return; }
const t0 = Date.now();
(function poll() {
  if (MathJax.startup && MathJax.startup.promise) {
    MathJax.startup.promise.then(() => done("ok")).catch(e => done("error: " + e));
  } else if (Date.now() - t0 > 3000) {  // called after window load: a deferred MathJax has run by now
    done("the MathJax script did not load (window.MathJax is only the inline configuration)"); }
  else { setTimeout(poll, 100); }
})();
"""

MATH_REPORT = """
const r = {math: document.querySelectorAll('.math').length, untypeset: [], errors: [], display: 0};
document.querySelectorAll('.math').forEach(e => {
  if (!e.querySelector('mjx-container')) r.untypeset.push(e.textContent.trim().slice(0, 80)); });
r.display = document.querySelectorAll('mjx-container[display="true"]').length;
r.merror = document.querySelectorAll('mjx-merror, .MathJax_Error, mjx-container [data-mjx-error]').length;
if (window.MathJax && MathJax.startup && MathJax.startup.document && MathJax.startup.toMML) {
  for (const item of MathJax.startup.document.math) {
    let mml = "";
    try { mml = MathJax.startup.toMML(item.root); } catch (e) { mml = "<merror>" + e + "</merror>"; }
    if (/<merror|mathcolor="red"/.test(mml)) r.errors.push(String(item.math).slice(0, 80));
  }
}
return r;
"""

WIDGET_REPORT = """
const views = Array.from(document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]'));
return views.map(v => {
  const area = v.parentElement.querySelector('.widget-subarea');
  return {model: JSON.parse(v.textContent).model_id,
          rendered: !!area && area.querySelector('[class*="widget-"], .jupyter-widgets') !== null};
});
"""

IMAGE_REPORT = """
const done = arguments[arguments.length - 1];
const imgs = Array.from(document.images);
imgs.forEach(i => { if (i.loading === 'lazy') i.loading = 'eager'; });
const t0 = Date.now();
(function poll() {
  if (imgs.every(i => i.complete) || Date.now() - t0 > 20000) {
    done({total: imgs.length,
          outputs: document.querySelectorAll('.cell_output img, .widget-subarea img').length,
          broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)});
  } else { setTimeout(poll, 100); }
})();
"""


LAYOUT_REPORT = """
const [maxStderr, minScale] = arguments;
const article = document.querySelector('.bd-article') || document.body;
const cells = Array.from(article.querySelectorAll('.cell'));
const where = e => { const c = e.closest('.cell');
  return c ? `code cell ${cells.indexOf(c) + 1} ${e.closest('.cell_output') ? 'output' : 'input'}`
           : `code block${e.closest('details') ? ' in a dropdown' : ''}`; };
const longest = e => e.textContent.split('\\n').reduce((a, b) => b.length > a.length ? b : a, '');
const r = {wide: [], stderr: [], small: []};
article.querySelectorAll('pre, .cell_output > *').forEach(e => {
  if (e.scrollWidth > e.clientWidth + 1) {
    const line = longest(e);
    r.wide.push(`${where(e)}: ${e.scrollWidth} px in a ${e.clientWidth} px column, longest line ` +
                `${line.length} characters: ${JSON.stringify(line.slice(0, 50))}`);
  }
});
article.querySelectorAll('.output.stderr').forEach(e => {
  const lines = e.innerText.trim().split('\\n').length;
  if (lines > maxStderr) r.stderr.push(`${where(e)}: ${lines} lines`);
});
article.querySelectorAll('.cell_output img, .widget-subarea img').forEach(i => {
  const shown = i.getBoundingClientRect().width;
  if (!shown || !i.naturalWidth) return;  // hidden (a closed dropdown, another tab), or broken: reported above
  const px = v => /^[0-9.]+(px)?$/.test(v || '') ? parseFloat(v) : 0;
  const asked = px(i.getAttribute('width')) || px(i.style.width) || i.naturalWidth;
  if (shown < minScale * asked)
    r.small.push(`${where(i)}: ${Math.round(shown)} px of ${Math.round(asked)} px ` +
                 `(${Math.round(100 * shown / asked)} %, natural width ${i.naturalWidth} px)`);
});
return r;
"""


def layout_problems(driver):
    """What a reader cannot read without scrolling sideways or squinting (see the module docstring)."""
    report = driver.execute_script(LAYOUT_REPORT, MAX_STDERR_LINES, MIN_IMAGE_SCALE)
    return ([f"stderr block longer than {MAX_STDERR_LINES} lines, {w}" for w in report["stderr"]]
            + [f"wider than its column, {w}" for w in report["wide"]]
            + [f"image shown below {MIN_IMAGE_SCALE:.0%} of the width it asks for, {w}" for w in report["small"]])


def check_links(hrefs, html_root, base):
    """Links into the book (same server) must reach an existing file and, with a fragment, an existing id."""
    problems = []
    for href in hrefs:
        parts = urlsplit(href)
        if parts.scheme not in ("http", "https") or not href.startswith(base):
            continue  # external (the offline machine cannot follow it) or mailto:/javascript:
        target = html_root / unquote(parts.path[len(urlsplit(base).path):])
        if target.is_dir():
            target = target / "index.html"
        if not target.exists():
            problems.append(f"broken link {href}")
        elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in anchors(target):
            problems.append(f"missing anchor #{parts.fragment} in {target.relative_to(html_root)}")
    return problems


def visit(driver, url, html_root, base, docname):
    """Open one page and list every problem a reader would see on it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    problems, facts = [], source_facts(docname)
    driver.get_log("browser")  # drop what earlier pages left
    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")

    mathjax = driver.execute_async_script(WAIT_MATHJAX)
    math = driver.execute_script(MATH_REPORT)
    if math["math"] and mathjax != "ok":
        problems.append(f"MathJax did not typeset the page's {math['math']} formulas: {mathjax}")
    if math["untypeset"]:
        problems.append(f"{len(math['untypeset'])} formulas not typeset, e.g. {math['untypeset'][0]!r}")
    if math["merror"] or math["errors"]:
        problems.append(f"math errors ({math['merror']} error elements) in: {math['errors'][:3]}")
    if facts["display_math"] and math["display"] == 0:
        problems.append("the source has display math but the page shows no display formula")

    views = []
    if driver.find_elements(By.CSS_SELECTOR, 'script[type="application/vnd.jupyter.widget-view+json"]'):
        embedder = driver.execute_script("return !!window._jupyter_widget_embedder")  # set by embed.js
        deadline = time.time() + (20 if embedder else 2)
        while True:
            views = driver.execute_script(WIDGET_REPORT)
            if all(v["rendered"] for v in views) or time.time() > deadline:
                break
            time.sleep(0.2)
    missing = [v["model"] for v in views if not v["rendered"]]
    if missing:
        why = "" if embedder else " (the ipywidgets embed manager script did not load)"
        problems.append(f"{len(missing)} of {len(views)} saved widget views not rendered{why}, e.g. model {missing[0]}")

    images = driver.execute_async_script(IMAGE_REPORT)
    if images["broken"]:
        problems.append(f"images that did not load: {images['broken'][:5]}")
    if facts["shows_plots"] and facts["stored_images"] == 0:
        problems.append("the notebook calls plt.show() but stores no figure (executed with MPLBACKEND=Agg?)")
    if facts["stored_images"] and images["outputs"] == 0:
        problems.append(f"the notebook stores {facts['stored_images']} figures, the page shows none")

    hrefs = driver.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
    problems += check_links(hrefs, html_root, base)
    colab = sorted({h for h in hrefs if h.startswith("https://colab.research.google.com")})
    if docname in toc_docnames():
        problems += layout_problems(driver)
    if docname.startswith("chapters/"):
        expected = REPO["colab_url"](*REPO["read_settings"](ROOT), f"{docname}.ipynb")
        if expected not in colab:
            problems.append(f"no Colab link to {expected}")
        problems += [f"Colab link to another path: {h}" for h in colab if h != expected]

    for entry in driver.get_log("browser"):
        if entry["level"] != "SEVERE":
            continue
        if FAVICON_404.match(entry["message"]):
            continue  # requested by the browser, not by the page (see FAVICON_404)
        offline = OFFLINE_ERROR.match(entry["message"])
        if offline and not offline["url"].startswith(base):
            continue  # another host, unreachable offline: forgiven (see OFFLINE_ERROR)
        problems.append(f"console error: {entry['message'][:300]}")
    return {"problems": problems, "views": len(views), "formulas": math["math"], "display_math": math["display"],
            "images": images["total"]}


@pytest.fixture(scope="session")
def reports(driver, server, html_dir):
    """Every built page (toc pages, index, search, API sources), visited once: {docname: report}."""
    pages = sorted(p for p in html_dir.rglob("*.html") if "_static" not in p.parts and "_sources" not in p.parts)
    out = {}
    for page in pages:
        docname = page.relative_to(html_dir).with_suffix("").as_posix()
        out[docname] = visit(driver, server + page.relative_to(html_dir).as_posix(), html_dir, server, docname)
    return out


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize("docname", toc_docnames())
def test_page_in_browser(docname, reports):
    assert docname in reports, f"{docname} is in _toc.yml but was not built"
    problems = reports[docname]["problems"]
    assert not problems, f"{docname}:\n  " + "\n  ".join(problems)


def test_other_pages_in_browser(reports):
    """Pages outside the toc: index redirect, genindex, search, module index, highlighted sources."""
    toc = set(toc_docnames())
    problems = [f"{name}: {p}" for name, r in reports.items() if name not in toc for p in r["problems"]]
    assert not problems, "\n".join(problems)


def test_widgets_and_math_are_exercised(reports):
    """The checks above bite: if the book has notebooks with widgets/math, the browser saw them."""
    chapters = [ROOT / f"{d}.ipynb" for d in toc_docnames() if (ROOT / f"{d}.ipynb").exists()]
    with_views = [p for p in chapters if "application/vnd.jupyter.widget-view+json" in p.read_text()]
    for path in with_views:
        assert reports[f"chapters/{path.stem}"]["views"] > 0, f"{path.name} stores widget views; none on the page"
    if any(source_facts(d)["display_math"] for d in reports):
        assert any(r["display_math"] for r in reports.values()), "no page shows a display formula"
    assert sum(r["formulas"] for r in reports.values()) > 0, "no formula typeset in the whole book"


def pick_screenshot_pages(reports):
    chapters = sorted(d for d in reports if d.startswith("chapters/"))
    picks = {"book-intro": "book/intro" if "book/intro" in reports else None,
             "chapter-math": next((d for d in chapters if reports[d]["display_math"]), None),
             "chapter-widget": next((d for d in chapters if reports[d]["views"]), None),
             "notation": "book/notation" if "book/notation" in reports else None}
    return {name: doc for name, doc in picks.items() if doc}


def shrink_png(path, limit=MAX_SCREENSHOT_BYTES):
    """Quantize to a 256-colour palette (text pages stay sharp), then halve the size until under the limit."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    while True:
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        if path.stat().st_size < limit or img.width < 400:
            return
        img = img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.LANCZOS)


# screenshot -> (element to show, scroll to its closest enclosing element of this kind, or None; offset in px)
SCROLL = {"chapter-math": ("mjx-container[display='true']", "section", -60),
          "chapter-widget": (".widget-subarea", None, -250)}
SCROLL_JS = """const [selector, enclosing, dy] = arguments;
let e = document.querySelector(selector);
if (e && enclosing) e = e.closest(enclosing) || e;
if (e) { e.scrollIntoView(); window.scrollBy(0, dy); }"""


def test_screenshots(driver, server, reports, tmp_path_factory):
    """A few pages as a reader sees them; the README shows two of them."""
    out = tmp_path_factory.mktemp("screenshots")
    picks = pick_screenshot_pages(reports)
    assert picks, "no page to photograph"
    update = os.environ.get("UPDATE_SCREENSHOTS") == "1"
    for name, docname in picks.items():
        driver.get(server + docname + ".html")
        driver.execute_async_script(WAIT_MATHJAX)
        if name in SCROLL:
            driver.execute_script(SCROLL_JS, *SCROLL[name])
            time.sleep(0.5)
        path = out / f"{name}.png"
        driver.save_screenshot(str(path))
        shrink_png(path)
        assert 0 < path.stat().st_size < MAX_SCREENSHOT_BYTES, f"{name}.png is {path.stat().st_size} bytes"
        if update:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, SCREENSHOTS / path.name)


SYNTHETIC_PAGE = """<!doctype html><html><body><div class="bd-article" style="width: 700px">
<div class="cell"><div class="cell_input"><pre style="overflow: auto">{fits}</pre></div>
<div class="cell_output"><div class="output stderr"><pre style="overflow: auto">{short_stderr}</pre></div>
<img src="retina.png" width="640" style="max-width: 100%"></div></div>
<div class="cell"><div class="cell_input"><pre style="overflow: auto">{wide}</pre></div>
<div class="cell_output"><div class="output stderr"><pre style="overflow: auto">{long_stderr}</pre></div>
<img src="large.png" style="max-width: 100%"></div></div>
</div></body></html>"""


def test_layout_checks_on_a_synthetic_page(driver, tmp_path):
    """The layout checks on a page with one good and one bad cell: each rule fires on the bad cell only."""
    from PIL import Image

    Image.new("RGB", (1280, 200), "white").save(tmp_path / "retina.png")  # 2x pixels for 640 px: sharp, passes
    Image.new("RGB", (1400, 200), "white").save(tmp_path / "large.png")  # shown at 700 px: 50 %, fails
    page = tmp_path / "page.html"
    page.write_text(SYNTHETIC_PAGE.format(fits="x" * 40, wide="y" * 200, short_stderr="\n".join("s" * 20),
                                          long_stderr="\n".join("l" * (MAX_STDERR_LINES + 5))))
    driver.get(page.as_uri())
    driver.execute_async_script(IMAGE_REPORT)
    problems = layout_problems(driver)
    assert len(problems) == 3 and all("code cell 2" in p for p in problems), "\n".join(problems)
    assert "25 lines" in problems[0] and "200 characters" in problems[1] and "50 %" in problems[2], problems
