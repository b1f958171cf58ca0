"""How long the book takes on this machine: every chapter in the quick preset, the strict build, the test command.

    python benchmarks/book_speed.py                      # every chapter, the build, the whole test command
    python benchmarks/book_speed.py chapters/01_*.ipynb  # some chapters; the test command over those only
    python benchmarks/book_speed.py --no-test-command    # skip the longest measurement

Each chapter is executed top to bottom in a fresh kernel (nbclient, nothing written back) with
OMP_NUM_THREADS=1, as CI runs it; the strict build is tests/conftest.py's ``strict_build`` (the build that
tests/test_book.py checks); the test command is the pytest run of ``.ci/run`` (two xdist workers, nbval lax),
in the environment running this script, without creating the virtual environment. Writes
``book_speed.json`` and ``book_speed.md`` to ``--out`` (default ``benchmarks/results/``, not committed) and
flags what misses the targets of issue 11: a chapter over 3 minutes, all chapters over 8 minutes, the test
command over 30 minutes.
The load average is recorded with every time: other work on the machine slows everything down.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
CHAPTER_TARGET_S = 3 * 60
BOOK_TARGET_S = 8 * 60
TEST_COMMAND_TARGET_S = 30 * 60
PYTEST = ["-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "2", "--dist", "loadfile",
          "--nbval-lax", "--nbval-current-env", "--nbval-sanitize-with", "tests/nbval_sanitize.cfg"]


def timed(fn):
    """(seconds, result, 1-minute load average before, after)."""
    load, start = os.getloadavg()[0], time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result, load, os.getloadavg()[0]


def execute_chapter(path):
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=None, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()


def test_command(chapters, every_chapter):
    paths = ["tests", "chapters"] if every_chapter else ["tests", *(str(p.relative_to(ROOT)) for p in chapters)]
    proc = subprocess.run([sys.executable, *PYTEST, *paths], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "CI": "1"})
    return {"returncode": proc.returncode, "summary": (proc.stdout.strip().splitlines() or [""])[-1]}


def markdown(report):
    rows = ["| what | seconds | load avg (before/after) | target |", "| --- | ---: | --- | --- |"]
    for name, r in report["chapters"].items():
        rows.append(f"| {name} | {r['seconds']:.1f} | {r['load'][0]:.1f} / {r['load'][1]:.1f} | "
                    f"{'ok' if r['seconds'] <= CHAPTER_TARGET_S else '**over 3 min**'} |")
    total = report["chapters_total_s"]
    rows.append(f"| **all chapters** | {total:.1f} | | {'ok' if total <= BOOK_TARGET_S else '**over 8 min**'} |")
    build = report["strict_build"]
    rows.append(f"| strict build from stored outputs (exit {build['returncode']}) | {build['seconds']:.1f} | "
                f"{build['load'][0]:.1f} / {build['load'][1]:.1f} | |")
    if report.get("test_command"):
        t = report["test_command"]
        rows.append(f"| test command ({t['scope']}): {t['summary']} | {t['seconds']:.1f} | "
                    f"{t['load'][0]:.1f} / {t['load'][1]:.1f} | "
                    f"{'ok' if t['seconds'] <= TEST_COMMAND_TARGET_S else '**over 30 min**'} |")
    head = (f"Book speed on {report['machine']}, {report['date']} (OMP_NUM_THREADS=1; "
            f"{report['cpus']} CPUs; times grow with the load average).\n\n")
    return head + "\n".join(rows) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("chapters", nargs="*", type=Path, help="chapter notebooks (default: all)")
    parser.add_argument("--no-test-command", action="store_true", help="do not time the test command")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONHASHSEED="0",
                      CUDA_VISIBLE_DEVICES="")
    every = sorted((ROOT / "chapters").glob("*.ipynb"))
    chapters = [p.resolve() for p in args.chapters] or every
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.node()} ({platform.processor() or platform.machine()})",
              "cpus": os.cpu_count(), "chapters": {}}

    for path in chapters:
        seconds, _, before, after = timed(lambda: execute_chapter(path))
        report["chapters"][path.stem] = {"seconds": seconds, "load": [before, after]}
        print(f"{path.stem}: {seconds:.1f} s", flush=True)
    report["chapters_total_s"] = sum(r["seconds"] for r in report["chapters"].values())

    from conftest import strict_build

    with tempfile.TemporaryDirectory() as tmp:
        seconds, build, before, after = timed(lambda: strict_build(tmp))
    report["strict_build"] = {"seconds": seconds, "returncode": build.returncode, "load": [before, after]}
    print(f"strict build: {seconds:.1f} s (exit {build.returncode})", flush=True)

    if not args.no_test_command:
        scope = "every chapter" if set(chapters) == set(every) else f"tests + {len(chapters)} chapters"
        seconds, result, before, after = timed(lambda: test_command(chapters, set(chapters) == set(every)))
        report["test_command"] = {"seconds": seconds, "scope": scope, "load": [before, after], **result}
        print(f"test command ({scope}): {seconds:.1f} s, {result['summary']}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "book_speed.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "book_speed.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
