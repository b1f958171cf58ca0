"""The book builds from scratch in strict mode (every warning an error), and every chapter is well-formed."""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
CHECKED = "nbval-check-output"  # the cell tag nbval compares in --nbval-lax mode (readers never see it)
MAX_LINE = 90  # characters of code or printed output that fit the page's column (tests/test_browser.py measures)
MAX_STDERR_LINES = 20  # the longest stderr block a page may show (tests/test_browser.py)


def toc_files():
    text = (ROOT / "_toc.yml").read_text()
    return {line.split("file:")[1].strip() for line in text.splitlines() if "file:" in line}


def code_cells(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_is_complete_and_executed(path):
    nb = json.loads(path.read_text())
    assert f"chapters/{path.stem}" in toc_files(), f"{path.name} is not listed in _toc.yml"
    cells = code_cells(nb)
    assert cells and all(c["execution_count"] is not None for c in cells), "execute the notebook and commit"
    errors = [o for c in cells for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, f"a stored output is an error: {errors[0].get('ename')}"
    assert any(CHECKED in c["metadata"].get("tags", []) for c in cells), f"no checked cell (cell tag {CHECKED})"
    first_code = "".join(cells[0]["source"])
    assert '"google.colab" in sys.modules' in first_code and "pip install" in first_code
    assert not any(word in first_code for word in ("torch", "numpy", "ipywidgets")), "never reinstall these on Colab"
    markdown = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    # the Colab badge and the install cell's URL: tests/test_repository_url.py
    assert r"\def\Var" in markdown, "define the math macros in the first cell (Colab has no _config.yml)"
    assert ":class: dropdown" in markdown, "no exercise with a hidden solution"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_no_test_markers_in_code(path):
    """Readers must not see test markers: a checked cell carries the cell tag, not a comment."""
    marked = [i for i, c in enumerate(json.loads(path.read_text())["cells"])
              if c["cell_type"] == "code" and "NBVAL_CHECK_OUTPUT" in "".join(c["source"])]
    assert not marked, f"cells {marked}: replace the # NBVAL_CHECK_OUTPUT comment by the cell tag {CHECKED}"


def printed_text(output):
    """The text a page shows for an output: a stream, or text/plain when nothing richer is stored (myst-nb's
    priority); a carriage return starts a new line on the page."""
    if output["output_type"] == "stream":
        text = output["text"]
    else:
        data = output.get("data", {})
        text = data.get("text/plain", "") if set(data) == {"text/plain"} else ""
    return "".join(text).replace("\r\n", "\n").replace("\r", "\n")


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_code_and_output_fit_the_column(path):
    """The browser test's layout rules counted in characters (quick, no browser): code and printed lines of at
    most MAX_LINE characters, at most MAX_STDERR_LINES lines of stderr per cell."""
    problems = []
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        if cell["cell_type"] != "code":
            continue
        lines = "".join(cell["source"]).splitlines()
        lines += [li for o in cell["outputs"] for li in printed_text(o).splitlines()]
        problems += [f"cell {i}: {len(li)} characters: {li[:50]!r}" for li in lines if len(li) > MAX_LINE]
        stderr = sum(len(printed_text(o).splitlines()) for o in cell["outputs"] if o.get("name") == "stderr")
        if stderr > MAX_STDERR_LINES:
            problems.append(f"cell {i}: {stderr} lines of stderr (use tqdm.auto; nb_merge_streams joins them)")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_figures_are_stored(path):
    """The book is built from stored outputs: a figure cell (``plt.show()``) must hold its image.

    Executing with ``MPLBACKEND=Agg`` set silently drops every figure; widget cells keep theirs in the widget state.
    """
    def has(cell, mime):
        return any(mime in o.get("data", {}) for o in cell["outputs"])

    nb = json.loads(path.read_text())
    draws = [i for i, c in enumerate(nb["cells"])  # an unconditional, top-level plt.show()
             if c["cell_type"] == "code" and "plt.show()" in "".join(c["source"]).splitlines()]
    missing = [i for i in draws if not has(nb["cells"][i], "image/png")
               and not has(nb["cells"][i], "application/vnd.jupyter.widget-view+json")]
    assert not missing, f"cells {missing} draw a figure but store none: execute without MPLBACKEND=Agg"


def test_strict_build_from_scratch(book_build):
    """`jupyter-book build --all -W -n --keep-going` on a copy of the book: no warning, no failed cell."""
    assert book_build.returncode == 0, book_build.log
    assert (book_build.html / "index.html").exists(), book_build.log
    for path in CHAPTERS:
        assert (book_build.html / "chapters" / f"{path.stem}.html").exists()
