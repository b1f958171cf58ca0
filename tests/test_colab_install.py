"""Colab from scratch: chapters run from their install cell, exactly as written, in a fresh environment.

One fresh virtual environment (no system site packages) per test run, shared by the tests below, gets what
Colab has before a chapter's first cell runs and what running a notebook needs:

* ``torch`` (Colab ships it, and the first cell must not reinstall it): linked in from this environment with
  its own dependencies, because installing it takes minutes and gigabytes;
* ``ipywidgets==7.7.1``, the version Colab ships (the package must accept it: upgrading it breaks Colab's
  widget manager);
* ``ipykernel`` + ``nbclient`` to run a notebook.

Chapters of a clean clone of the repository's HEAD then execute there from top to bottom, as on Colab: a
stand-in ``google.colab`` module is registered first, so each notebook's own first cell runs its
``%pip install "hyperinit_lite @ git+<repository>"`` unchanged; git is told (``url.<clone>.insteadOf``,
in a private git config) to fetch ``_config.yml``'s repository URL from the clone, so nothing is rewritten
in the notebook. Everything a chapter imports besides torch must come in as a declared dependency. A last
cell, added in memory, checks that the kernel ran in the fresh environment, on the installed copy of the
package, with the expected ipywidgets.

Executed: a widget chapter (``WIDGET_CHAPTER``) and an experiment chapter (``EXPERIMENT_CHAPTER``) with
Colab's ipywidgets 7.7.1, then the widget chapter again after upgrading the same environment to the newest
ipywidgets 8. HEAD is what a reader's Colab installs: commit before expecting a change to be seen here.
Marked ``slow`` (``-m "not slow"`` deselects them). Measured on the 2-core test machine while it was shared
with other jobs (load about 10): 7.5 minutes together (the venv 3 min, the chapters 2, 2 and 1); less alone.
"""
import importlib.metadata
import json
import os
import runpy
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
REPO = runpy.run_path(str(ROOT / "book" / "set_repository_url.py"))
WIDGET_CHAPTER = "chapters/02_xavier.ipynb"
EXPERIMENT_CHAPTER = "chapters/13_dimaml_meets_hyperfan.ipynb"
PREINSTALLED = "torch"  # on Colab before the first cell runs
COLAB_IPYWIDGETS = "7.7.1"  # what Colab ships
KERNEL_TOOLS = ["ipykernel<7", "nbclient"]  # present on Colab (ipykernel 6); needed to run a notebook
PRETEND_COLAB = 'import sys, types\nsys.modules["google.colab"] = types.ModuleType("google.colab")'
CHECK_CELL = textwrap.dedent("""\
    import importlib.metadata, json, sys, ipywidgets, hyperinit_lite
    print("COLAB-TEST", json.dumps({"prefix": sys.prefix, "module": hyperinit_lite.__file__,
                                    "ipywidgets": ipywidgets.__version__,
                                    "requires": importlib.metadata.requires("hyperinit_lite") or []}))
""")
RUNNER = textwrap.dedent("""\
    import sys, nbformat, nbclient
    from pathlib import Path
    path, install, pretend, check = sys.argv[1:]
    nb = nbformat.read(path, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert install in first.source, f"the first code cell does not install {install}"
    nb.cells.insert(0, nbformat.v4.new_code_cell(pretend))
    nb.cells.append(nbformat.v4.new_code_cell(check))
    try:
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(Path(path).parent)}}).execute()
    finally:
        print("first cell printed:", *(o.get("text", "") for o in first.outputs))
    print(nb.cells[-1].outputs[0]["text"])
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


def fresh_env(tmp, repo, url):
    """Environment variables for the venv's kernel; git fetches ``url`` from the clone ``repo``."""
    gitconfig = tmp / "gitconfig"
    gitconfig.write_text(f'[url "file://{repo}"]\n\tinsteadOf = {url}\n')
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "JUPYTER", "VIRTUAL_ENV", "MPL", "GIT_CONFIG"))}
    env.update(PATH=f"{tmp / 'venv' / 'bin'}:{env.get('PATH', '')}", PYTHONNOUSERSITE="1",
               GIT_CONFIG_GLOBAL=str(gitconfig), JUPYTER_DATA_DIR=str(tmp / "jupyter-data"),
               JUPYTER_CONFIG_DIR=str(tmp / "jupyter-config"), IPYTHONDIR=str(tmp / "ipython"))
    return env


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    """A clean clone of HEAD and one fresh venv as Colab has it (torch linked, ipywidgets 7.7.1)."""
    if shutil.which("git") is None:
        pytest.fail("git is needed to install the package the way the chapters' first cell does")
    if not (ROOT / ".git").exists():
        pytest.skip("not a git work tree: nothing to clone")
    tmp = tmp_path_factory.mktemp("colab")
    repo = tmp / "repo"
    # A full clone: pip's own `git clone --filter=blob:none` of a shallow one crawls (minutes instead of seconds).
    run(["git", "clone", "--quiet", f"file://{ROOT}", str(repo)])
    url, _ = REPO["read_settings"](repo)
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", str(venv)])  # without --system-site-packages
    python = venv / "bin" / "python"
    linked = link_preinstalled(PREINSTALLED, next((venv / "lib").glob("python3*/site-packages")))
    # Colab's pip is recent; the one venv seeds may not parse `name @ git+file:///path`.
    run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip", *KERNEL_TOOLS,
         f"ipywidgets=={COLAB_IPYWIDGETS}"])
    (tmp / "run_notebook.py").write_text(RUNNER)
    return SimpleNamespace(tmp=tmp, repo=repo, url=url, venv=venv, python=python, linked=linked,
                           env=fresh_env(tmp, repo, url))


def execute(colab, chapter):
    """Run ``chapter`` of the clone in the venv from its own first cell; the facts its last cell printed."""
    path = colab.repo / chapter
    if not path.exists():
        pytest.skip(f"{chapter} is not committed yet")
    proc = subprocess.run([str(colab.python), str(colab.tmp / "run_notebook.py"), str(path),
                           REPO["install_spec"](colab.url), PRETEND_COLAB, CHECK_CELL],
                          capture_output=True, text=True, env=colab.env, cwd=path.parent)
    installed = run([str(colab.python), "-m", "pip", "list", "--format=freeze"]).stdout
    print(f"linked in as on Colab: {sorted(colab.linked)}\ninstalled:\n{installed}")
    assert proc.returncode == 0, (f"{chapter} failed in a fresh environment with only the package's declared "
                                  f"dependencies:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}")
    line = next(li for li in proc.stdout.splitlines() if li.startswith("COLAB-TEST"))
    facts = json.loads(line.split(" ", 1)[1])
    venv = colab.venv.resolve()
    assert Path(facts["prefix"]).resolve() == venv, f"the kernel ran in {facts['prefix']}, not in the venv"
    assert Path(facts["module"]).resolve().is_relative_to(venv), \
        f"hyperinit_lite was imported from {facts['module']}, not from the package installed from the clone"
    declared = {canonicalize_name(Requirement(r).name) for r in facts["requires"] if "extra ==" not in r}
    assert canonicalize_name(PREINSTALLED) in declared, f"the package does not declare {PREINSTALLED}"
    return facts


@pytest.mark.slow
def test_widget_chapter_with_colabs_ipywidgets_7(colab):
    facts = execute(colab, WIDGET_CHAPTER)
    assert facts["ipywidgets"] == COLAB_IPYWIDGETS, \
        f"the install cell replaced Colab's ipywidgets {COLAB_IPYWIDGETS} by {facts['ipywidgets']}"


@pytest.mark.slow
def test_experiment_chapter_like_colab(colab):
    execute(colab, EXPERIMENT_CHAPTER)


@pytest.mark.slow
def test_widget_chapter_with_newest_ipywidgets_8(colab):
    """Last in this file: it upgrades the shared environment."""
    run([str(colab.python), "-m", "pip", "install", "--quiet", "--upgrade", "ipywidgets>=8,<9"], env=colab.env)
    facts = execute(colab, WIDGET_CHAPTER)
    assert facts["ipywidgets"].startswith("8."), facts["ipywidgets"]
