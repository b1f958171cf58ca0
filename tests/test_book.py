"""The book builds from scratch in strict mode (every warning an error), and every chapter is well-formed."""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
COLAB = "https://colab.research.google.com/github/hyperinit/initializing-hypernetworks/blob/main/chapters/"


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
    assert any("NBVAL_CHECK_OUTPUT" in "".join(c["source"]) for c in cells), "no checked cell"
    first_code = "".join(cells[0]["source"])
    assert '"google.colab" in sys.modules' in first_code and "pip install" in first_code
    assert not any(word in first_code for word in ("torch", "numpy", "ipywidgets")), "never reinstall these on Colab"
    markdown = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert COLAB + path.name in markdown, "Colab badge missing or pointing elsewhere"
    assert r"\def\Var" in markdown, "define the math macros in the first cell (Colab has no _config.yml)"
    assert ":class: dropdown" in markdown, "no exercise with a hidden solution"


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
