"""Set the book's repository URL: ``_config.yml`` holds it, this command writes it everywhere else.

``repository.url`` and ``repository.branch`` in ``_config.yml`` are the only place the repository is named.
Jupyter Book builds the repository and launch (Colab) buttons from them; what it cannot reach is rewritten
here, from them:

* every chapter's Colab badge, ``https://colab.research.google.com/github/OWNER/REPO/blob/BRANCH/chapters/F``
  where ``F`` is the notebook's own file name;
* every chapter's install cell, ``%pip install -q "git+URL"`` (84 characters for today's URL: a code line of
  a chapter fits 90; the older form ``"hyperinit_lite @ git+URL"`` is rewritten to it);
* README.md's ``**Repository:** <URL>`` line and CONTRIBUTING.md's badge and install-cell templates.

Usage, from any folder::

    python book/set_repository_url.py                                  # re-apply _config.yml's URL
    python book/set_repository_url.py https://github.com/OWNER/REPO    # write it into _config.yml, apply
    python book/set_repository_url.py --check                          # list disagreements, exit 1 if any

``tests/test_repository_url.py`` fails while any link or install cell disagrees with ``_config.yml``.
"""
import argparse
import difflib
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
GITHUB_RE = re.compile(r"https://github\.com/([\w.-]+)/([\w.-]+)")
COLAB_RE = re.compile(
    r"https://colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/\S+?/(chapters/[\w.-]+\.ipynb)")
INSTALL_RE = re.compile(r"(?:hyperinit_lite @ )?git\+https://github\.com/[^\"'\s]+")
README_RE = re.compile(r"\*\*Repository:\*\* <[^>]*>")
CONFIG_URL_RE = re.compile(r"(^repository:[ \t]*\n(?:[ \t]+.*\n)*?[ \t]+url:[ \t]*)\S+", re.MULTILINE)
TEXT_FILES = ("README.md", "CONTRIBUTING.md")


def normalize_url(url):
    """``https://github.com/OWNER/REPO`` without a trailing ``/`` or ``.git``; Colab opens GitHub only."""
    url = url.strip().rstrip("/").removesuffix(".git")
    if not GITHUB_RE.fullmatch(url):
        raise ValueError(f"url must be https://github.com/OWNER/REPO (Colab opens notebooks from GitHub), "
                         f"got {url!r}")
    return url


def read_settings(root=ROOT):
    """``(url, branch)`` from ``root/_config.yml``'s ``repository`` section (branch defaults to ``main``)."""
    repository = yaml.safe_load((Path(root) / "_config.yml").read_text()).get("repository") or {}
    if "url" not in repository:
        raise ValueError("_config.yml has no repository.url")
    return normalize_url(repository["url"]), str(repository.get("branch", "main"))


def write_config_url_(root, url):
    """Replace ``repository.url`` in ``root/_config.yml`` in place, keeping every other line and comment."""
    path = Path(root) / "_config.yml"
    text, count = CONFIG_URL_RE.subn(lambda m: m.group(1) + normalize_url(url), path.read_text(), count=1)
    if count != 1:
        raise ValueError(f"{path} has no 'url:' line under 'repository:'")
    path.write_text(text)


def colab_url(url, branch, path):
    """The Colab link that opens ``path`` (relative to the repository root) of ``url`` at ``branch``."""
    owner, repo = GITHUB_RE.fullmatch(url).groups()
    return f"https://colab.research.google.com/github/{owner}/{repo}/blob/{branch}/{path}"


def install_spec(url):
    """The requirement the install cell passes to ``%pip install``: the package from the repository."""
    return f"git+{url}"


def rewrite_text(text, url, branch, own_path=None):
    """``text`` with every Colab link, install requirement and README repository line set from ``url``.

    A Colab link keeps its notebook path, or points at ``own_path`` when given (a chapter's badge).
    """
    text = COLAB_RE.sub(lambda m: colab_url(url, branch, own_path or m.group(1)), text)
    text = INSTALL_RE.sub(install_spec(url), text)
    return README_RE.sub(f"**Repository:** <{url}>", text)


def cell_text(cell):
    return "".join(cell["source"])


def set_cell_text_(cell, text):
    cell["source"] = text.splitlines(keepends=True) if isinstance(cell["source"], list) else text


def rewrite_notebook(text, url, branch, own_path):
    """A notebook's JSON text with its markdown and code cells rewritten (outputs untouched)."""
    nb = json.loads(text)
    for cell in nb["cells"]:
        if cell["cell_type"] in ("markdown", "code"):
            set_cell_text_(cell, rewrite_text(cell_text(cell), url, branch, own_path))
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"  # nbformat's layout


def notebooks(root):
    return sorted((Path(root) / "chapters").glob("*.ipynb"))


def rewritten(root, url, branch):
    """{path: new text} for every file that mentions the repository, as ``url`` and ``branch`` make it."""
    root = Path(root)
    out = {path: rewrite_notebook(path.read_text(), url, branch, path.relative_to(root).as_posix())
           for path in notebooks(root)}
    for name in TEXT_FILES:
        if (root / name).exists():
            out[root / name] = rewrite_text((root / name).read_text(), url, branch)
    return out


def missing_mentions(texts, root, url, branch):
    """Places that must name the repository and would not even after a rewrite (``texts``): a chapter's
    badge (first markdown cell), its install cell (first code cell), README's ``**Repository:**`` line."""
    problems = []
    for path in notebooks(root):
        cells = json.loads(texts[path])["cells"]
        name = path.relative_to(root).as_posix()
        own = colab_url(url, branch, name)
        markdown = next((cell_text(c) for c in cells if c["cell_type"] == "markdown"), "")
        code = next((cell_text(c) for c in cells if c["cell_type"] == "code"), "")
        if own not in markdown:
            problems.append(f"{name}: the first markdown cell has no Colab badge {own}")
        if f'"{install_spec(url)}"' not in code:
            problems.append(f'{name}: the first code cell does not install "{install_spec(url)}"')
    readme = Path(root) / "README.md"
    if readme in texts and f"**Repository:** <{url}>" not in texts[readme]:
        problems.append(f"README.md: no line '**Repository:** <{url}>'")
    return problems


def first_difference(name, old, new):
    """``name: <old passage> should read <new passage>`` at the first line where they differ."""
    a, b = next((a, b) for a, b in zip(old.splitlines(), new.splitlines()) if a != b)
    ops = [op for op in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes() if op[0] != "equal"]
    (i1, j1), (i2, j2) = ops[0][1::2], ops[-1][2::2]
    return f"{name}: ...{a[max(i1 - 30, 0):i2 + 10]}... should read ...{b[max(j1 - 30, 0):j2 + 10]}..."


def disagreements(root=ROOT):
    """Every place that disagrees with ``root/_config.yml``'s repository; empty when all agree."""
    root = Path(root)
    url, branch = read_settings(root)
    texts = rewritten(root, url, branch)
    changed = [first_difference(path.relative_to(root).as_posix(), path.read_text(), text)
               for path, text in texts.items() if path.read_text() != text]
    if changed:
        changed.append(f"(_config.yml: {url}, branch {branch}; "
                       "python book/set_repository_url.py rewrites these)")
    return changed + missing_mentions(texts, root, url, branch)


def apply_(root=ROOT, url=None):
    """Write ``url`` (if given) into ``_config.yml``, then rewrite every file from it; the files changed."""
    if url is not None:
        write_config_url_(root, url)
    url, branch = read_settings(root)
    texts = rewritten(root, url, branch)
    changed = [path for path, text in texts.items() if path.read_text() != text]
    for path in changed:
        path.write_text(texts[path])
    return changed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", help="https://github.com/OWNER/REPO; default: _config.yml's")
    parser.add_argument("--check", action="store_true", help="only list disagreements (exit 1 if any)")
    parser.add_argument("--root", type=Path, default=ROOT, 
                        help="the book's folder (default: this repository)")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = disagreements(args.root)
            print("\n".join(problems) or "every link and install cell agrees with _config.yml")
            return 1 if problems else 0
        changed = apply_(args.root, args.url)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    url, branch = read_settings(args.root)
    print(f"repository {url} (branch {branch}); rewrote {len(changed)} files"
          + "".join(f"\n  {p.relative_to(args.root)}" for p in changed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
