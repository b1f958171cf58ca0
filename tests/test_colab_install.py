"""Colab from scratch: the package declares everything a chapter needs.

A fresh virtual environment (no system site packages) gets what Colab has before a chapter's first cell runs
and that this test needs: ``torch`` (Colab ships it, and the first cell must not reinstall it; linked in from
this environment with its own dependencies, because installing it takes minutes and gigabytes), and
``ipykernel`` + ``nbclient`` to run a notebook. Then ``chapters/01_ricci_calculus.ipynb`` of a clean clone of the
repository's HEAD executes there from top to bottom, as on Colab: a stand-in ``google.colab`` module is
registered first, so the notebook's own first cell runs its ``%pip install "hyperinit_lite @ git+<repository>"``
with the repository URL pointed at the clone. Everything else the chapter imports (numpy, matplotlib, ...) must
therefore come in as a declared dependency of the package, and torch must be one too. A last cell, added in
memory, checks that the kernel ran in the fresh environment on the installed copy of the package, not on this
work tree.

HEAD is what a reader's Colab installs: commit before expecting a change to be seen here. About a minute on
this machine; marked ``slow`` (``-m "not slow"`` deselects it).
"""
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = "chapters/01_ricci_calculus.ipynb"
REPOSITORY = "git+https://github.com/hyperinit/initializing-hypernetworks"
PREINSTALLED = "torch"  # on Colab before the first cell runs
KERNEL_TOOLS = ["ipykernel", "nbclient"]  # present on Colab; needed here to run a notebook
PRETEND_COLAB = 'import sys, types\nsys.modules["google.colab"] = types.ModuleType("google.colab")'
CHECK_CELL = textwrap.dedent("""\
    import importlib.metadata, json, sys, hyperinit_lite
    print("COLAB-TEST", json.dumps({"prefix": sys.prefix, "module": hyperinit_lite.__file__,
                                    "requires": importlib.metadata.requires("hyperinit_lite") or []}))
""")


def run(cmd, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def installed_closure(name):
    """The distributions installed here that ``name`` needs at run time (itself included): {name: dist}."""
    found, todo = {}, [name]
    while todo:
        key = canonicalize_name(todo.pop())
        if key in found:
            continue
        try:
            dist = importlib.metadata.distribution(key)
        except importlib.metadata.PackageNotFoundError:
            continue  # a requirement for another platform, or optional
        found[key] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


def link_preinstalled(name, site_packages):
    """Make ``name`` and its run-time dependencies installed in the venv: links to this environment's files."""
    dists = installed_closure(name)
    assert canonicalize_name(name) in dists, f"{name} is not installed in the environment running the tests"
    for dist in dists.values():
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            link = site_packages / top
            if not link.exists() and not top.endswith(".pth"):
                link.symlink_to(Path(dist.locate_file(top)).resolve())
    return set(dists)


@pytest.mark.slow
def test_fresh_environment_runs_a_chapter_like_colab(tmp_path):
    if shutil.which("git") is None:
        pytest.fail("git is needed to install the package the way the chapters' first cell does")
    if not (ROOT / ".git").exists():
        pytest.skip("not a git work tree: nothing to clone")
    repo = tmp_path / "repo"
    # A full clone: pip's own `git clone --filter=blob:none` of a shallow one crawls (minutes instead of seconds).
    run(["git", "clone", "--quiet", f"file://{ROOT}", str(repo)])
    chapter = repo / CHAPTER
    if not chapter.exists():
        pytest.skip(f"{CHAPTER} is not committed yet")

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])  # without --system-site-packages
    python = venv / "bin" / "python"
    site_packages = next((venv / "lib").glob("python3*/site-packages"))
    linked = link_preinstalled(PREINSTALLED, site_packages)
    # Colab's pip is recent; the one venv seeds may not parse `name @ git+file:///path`.
    run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip", *KERNEL_TOOLS])

    runner = tmp_path / "run_notebook.py"
    runner.write_text(textwrap.dedent(f"""\
        import nbformat, nbclient
        nb = nbformat.read({str(chapter)!r}, as_version=4)
        first = next(c for c in nb.cells if c.cell_type == "code")
        assert {REPOSITORY!r} in first.source, "the first code cell does not install from the repository"
        first.source = first.source.replace({REPOSITORY!r}, "git+file://{repo}")
        nb.cells.insert(0, nbformat.v4.new_code_cell({PRETEND_COLAB!r}))
        nb.cells.append(nbformat.v4.new_code_cell({CHECK_CELL!r}))
        try:
            nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                    resources={{"metadata": {{"path": {str(chapter.parent)!r}}}}}).execute()
        finally:
            print("first cell printed:", *(o.get("text", "") for o in first.outputs))
        print(nb.cells[-1].outputs[0]["text"])
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "JUPYTER", "VIRTUAL_ENV", "MPL"))}
    env.update(PATH=f"{venv / 'bin'}:{env.get('PATH', '')}", PYTHONNOUSERSITE="1",
               JUPYTER_DATA_DIR=str(tmp_path / "jupyter-data"), JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter-config"),
               IPYTHONDIR=str(tmp_path / "ipython"))
    proc = subprocess.run([str(python), str(runner)], capture_output=True, text=True, env=env, cwd=chapter.parent)
    installed = run([str(python), "-m", "pip", "list", "--format=freeze"]).stdout
    print(f"linked in as on Colab: {sorted(linked)}\ninstalled:\n{installed}")
    assert proc.returncode == 0, (f"{CHAPTER} failed in a fresh environment with only the package's declared "
                                  f"dependencies:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}")
    line = next(li for li in proc.stdout.splitlines() if li.startswith("COLAB-TEST"))
    facts = json.loads(line.split(" ", 1)[1])
    assert Path(facts["prefix"]).resolve() == venv.resolve(), f"the kernel ran in {facts['prefix']}, not in the venv"
    assert Path(facts["module"]).resolve().is_relative_to(venv.resolve()), \
        f"hyperinit_lite was imported from {facts['module']}, not from the package installed from the clone"
    declared = {canonicalize_name(Requirement(r).name) for r in facts["requires"] if "extra ==" not in r}
    assert canonicalize_name(PREINSTALLED) in declared, f"the package does not declare {PREINSTALLED}"
