"""Which packages does a change touch? Prints a GitHub Actions matrix as JSON.

    python tools/changes.py --base origin/main                # diff base...HEAD
    python tools/changes.py --base A --head B --python 3.10 3.13
    python tools/changes.py --files shared-kernels/csrc/x.cpp README.md
    python tools/changes.py --base "$BASE" --github-output    # appends matrix=..., any=... to $GITHUB_OUTPUT

Rules:
- ``shared-kernels/**`` touches shared-kernels and every package;
- ``packages/<dir>/**`` touches that package and every package that depends on it (transitively,
  per the ``dependencies`` and ``optional-dependencies`` of each pyproject.toml);
- root build and CI files (``pyproject.toml``, ``uv.lock``, ``tools/``, ``.github/``, ``.ci/``) and
  any other unknown root path touch everything (the safe choice);
- top-level docs (``*.md`` at the root, ``LICENSE*``) touch nothing;
- a path under ``packages/`` that belongs to no package (a folder without pyproject.toml, or a file
  directly in ``packages/``) is an error: this script needs an update.

Output: ``{"include": [{"package": "<distribution>", "path": "<folder>"}, ...]}``, crossed with
``python`` when ``--python`` is given. Standard library only.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    PACKAGES_DIR,
    REPO_ROOT,
    SHARED_KERNELS_DIR,
    Package,
    ToolError,
    load_packages,
    run_main,
)

EVERYTHING_FILES = ("pyproject.toml", "uv.lock", ".python-version")
EVERYTHING_DIRS = ("tools", ".github", ".ci")
NOTHING_PATTERNS = ("*.md", "LICENSE*", "NOTICE*")
_NULL_REV = re.compile(r"^0+$")


def changed_files(base: str, head: str, root: Path) -> list[str]:
    """Paths changed between the merge base of ``base`` and ``head``, and ``head`` (renames as two paths)."""
    cmd = ["git", "-C", str(root), "diff", "--name-only", "--no-renames", f"{base}...{head}", "--"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()}")
    return [line for line in proc.stdout.splitlines() if line]


def _dependents(packages: list[Package], touched: set[str]) -> set[str]:
    """``touched`` (package paths) widened with every package that depends on one of them."""
    out = set(touched)
    while True:
        keys = {p.key for p in packages if p.path in out}
        more = {p.path for p in packages if p.path not in out and p.dependencies & keys}
        if not more:
            return out
        out |= more


def classify(path: str, packages: list[Package], root: Path) -> tuple[str, str | None]:
    """``("all" | "none" | "package", package path)`` for one changed file."""
    parts = Path(path).parts
    if not parts:
        return "none", None
    top = parts[0]
    if top == SHARED_KERNELS_DIR:
        return "all", None
    if top == PACKAGES_DIR:
        if len(parts) < 3:
            raise ToolError(
                f"{path}: a file directly under packages/ belongs to no package; "
                "tools/changes.py needs an update to know what it touches"
            )
        rel = f"{PACKAGES_DIR}/{parts[1]}"
        if any(p.path == rel for p in packages):
            return "package", rel
        if not (root / rel).exists():  # the whole folder was deleted by the change
            print(f"note: {rel} no longer exists; ignoring {path}", file=sys.stderr)
            return "none", None
        raise ToolError(
            f"{path}: {rel}/ has no pyproject.toml, so it is not a known package; "
            "add its pyproject.toml or update tools/changes.py to say what this folder touches"
        )
    if len(parts) == 1 and any(fnmatch.fnmatch(top, pat) for pat in NOTHING_PATTERNS):
        return "none", None
    if (len(parts) == 1 and top in EVERYTHING_FILES) or top in EVERYTHING_DIRS:
        return "all", None
    print(f"note: {path} is not a known root path; treating it as touching everything", file=sys.stderr)
    return "all", None


def touched_packages(files: list[str], packages: list[Package], root: Path = REPO_ROOT) -> list[Package]:
    """The packages (shared-kernels included) that a change of ``files`` touches, sorted by path."""
    paths: set[str] = set()
    for f in files:
        f = f.strip()
        kind, rel = classify(f[2:] if f.startswith("./") else f, packages, root)
        if kind == "all":
            return list(packages)
        if kind == "package":
            paths.add(rel)
    paths = _dependents(packages, paths)
    return [p for p in packages if p.path in paths]


def matrix(packages: list[Package], pythons: list[str] | None) -> dict:
    rows = [{"package": p.dist, "path": p.path} for p in packages]
    if pythons:
        rows = [{**r, "python": v} for r in rows for v in pythons]
    return {"include": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--base", help="git revision to compare with (the merge base with --head is used)")
    src.add_argument("--files", nargs="+", metavar="PATH", help="changed paths, relative to the repo root")
    ap.add_argument("--head", default="HEAD", help="git revision of the change (default HEAD)")
    ap.add_argument("--python", nargs="+", metavar="VERSION", help="cross the matrix with these Pythons")
    ap.add_argument(
        "--github-output",
        action="store_true",
        help="also append `matrix=<json>` and `any=true|false` to the file named by $GITHUB_OUTPUT",
    )
    ap.add_argument("--root", type=Path, default=REPO_ROOT, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    root = args.root.resolve()
    packages = load_packages(root)
    if not packages:
        raise ToolError(f"no packages found under {root}")
    if args.files is not None:
        files = args.files
    elif _NULL_REV.match(args.base or ""):
        # A push that creates a branch has no previous commit: test everything.
        print("note: base revision is null (new branch); every package is touched", file=sys.stderr)
        files = ["pyproject.toml"]
    else:
        files = changed_files(args.base, args.head, root)
    result = matrix(touched_packages(files, packages, root), args.python)
    text = json.dumps(result, separators=(",", ":"))
    print(text)
    if args.github_output:
        out = os.environ.get("GITHUB_OUTPUT")
        if not out:
            raise ToolError("--github-output given but $GITHUB_OUTPUT is not set")
        with open(out, "a") as fh:
            fh.write(f"matrix={text}\n")
            fh.write(f"any={'true' if result['include'] else 'false'}\n")
    return 0


if __name__ == "__main__":
    run_main(main)
