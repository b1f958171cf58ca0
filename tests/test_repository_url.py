"""The repository URL lives in ``_config.yml`` only: every Colab badge, install cell, README's repository line
and CONTRIBUTING.md's templates agree with it, and ``book/set_repository_url.py`` rewrites them all.

The rewrite is tried on copies in a temporary folder (never on the work tree): a tampered copy is caught,
the command repairs it, and a new URL written then reverted gives back the original files byte for byte.
"""
import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "book" / "set_repository_url.py"
REPO = runpy.run_path(str(SCRIPT))
FORK = "https://github.com/someone-else/initializing-hypernetworks-fork"
COPIED = ["_config.yml", "README.md", "CONTRIBUTING.md",
          "chapters/01_ricci_calculus.ipynb", "chapters/02_xavier.ipynb"]


def test_every_link_and_install_cell_agrees_with_config():
    problems = REPO["disagreements"](ROOT)
    assert not problems, "\n".join(problems)


def test_the_command_checks_from_the_command_line():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture
def book_copy(tmp_path):
    """The files that name the repository, copied (two chapters are enough to exercise every rule)."""
    for name in COPIED:
        if (ROOT / name).exists():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / name, tmp_path / name)
    return tmp_path


def edit_cell_(path, kind, old, new):
    """Replace ``old`` by ``new`` in the first cell of ``kind`` of the notebook at ``path``."""
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if c["cell_type"] == kind)
    text = "".join(cell["source"])
    assert old in text
    cell["source"] = text.replace(old, new)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def test_a_tampered_copy_is_caught_then_repaired(book_copy):
    url, _ = REPO["read_settings"](book_copy)
    squatter = "git+https://github.com/squatter/initializing-hypernetworks"
    edit_cell_(book_copy / COPIED[3], "code", f"git+{url}", squatter)
    edit_cell_(book_copy / COPIED[4], "markdown", "/blob/main/chapters/02_xavier.ipynb",
               "/blob/main/chapters/01_ricci_calculus.ipynb")
    readme = book_copy / "README.md"
    readme.write_text(readme.read_text().replace(f"<{url}>", "<https://github.com/squatter/x>"))
    problems = "\n".join(REPO["disagreements"](book_copy))
    for name in ("01_ricci_calculus.ipynb", "02_xavier.ipynb", "README.md"):
        assert name in problems, f"the tampered {name} was not reported:\n{problems}"
    assert REPO["main"](["--check", "--root", str(book_copy)]) == 1
    assert REPO["main"](["--root", str(book_copy)]) == 0
    assert REPO["disagreements"](book_copy) == []


def test_a_new_url_rewrites_everything_and_reverts_exactly(book_copy):
    assert REPO["main"](["--root", str(book_copy)]) == 0  # the copy as the command leaves it
    original = {name: (book_copy / name).read_bytes() for name in COPIED}
    old_url, branch = REPO["read_settings"](book_copy)
    assert REPO["main"]([FORK + ".git", "--root", str(book_copy)]) == 0
    assert REPO["read_settings"](book_copy) == (FORK, branch)
    assert REPO["disagreements"](book_copy) == []
    for name in COPIED[1:]:
        text = (book_copy / name).read_text()
        if name.endswith(".ipynb"):  # outputs may quote anything; only the cells' sources must change
            text = "".join("".join(c["source"]) for c in json.loads(text)["cells"])
        assert old_url.split("//")[1] not in text, f"{name} still names {old_url}"
        assert FORK in text
    assert REPO["main"]([old_url, "--root", str(book_copy)]) == 0
    assert {name: (book_copy / name).read_bytes() for name in COPIED} == original


@pytest.mark.parametrize("url", ["https://gitlab.com/a/b", "github.com/a/b", "https://github.com/a"])
def test_a_url_that_colab_cannot_open_is_refused(book_copy, url, capsys):
    config = (book_copy / "_config.yml").read_bytes()
    assert REPO["main"]([url, "--root", str(book_copy)]) == 2
    assert "url must be https://github.com/OWNER/REPO" in capsys.readouterr().err
    assert (book_copy / "_config.yml").read_bytes() == config
