"""Release one package of the monorepo: bump, check, build, tag.

    python tools/release.py sageattention 2.3.0 --dry-run
    python tools/release.py sageattention 2.3.0            # bump, build, twine check, commit, tag
    python tools/release.py shared-kernels 0.2.0 --no-tag --out dist/

Steps: find the package by distribution name; check that the new version is valid PEP 440, in
canonical form and greater than the current ``__version__``; check that the package's CHANGELOG.md
has a ``## <new-version>`` heading; set ``__version__`` in ``src/<import>/__init__.py``; build the
sdist and the wheel (``uv build --no-sources``, or ``python -m build`` without uv) and run
``twine check --strict`` on them; copy them to ``--out`` (default ``dist/``); then, unless
``--no-tag``, commit the version file and changelog ("Release <dist>==<version>") and create the
annotated tag ``<distribution>==<version>`` that the release workflow publishes. Pushing is left to
you. ``--dry-run`` checks everything and changes nothing. If the build or the check fails, the
version file is restored.

    python tools/release.py --verify-tag "sageattention==2.3.0" [--github-output]

(used by .github/workflows/release.yml) checks that a tag matches the package's ``__version__`` and
prints ``package=``, ``version=``, ``path=`` and ``kind=`` (``pure`` or ``shared-kernels``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    REPO_ROOT,
    Package,
    ToolError,
    find_package,
    load_packages,
    read_version,
    replace_version,
    run_main,
)


def _run(cmd: list[str], cwd: Path, what: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).strip()
        raise ToolError(f"{what} failed (`{' '.join(cmd)}`):\n{out}")
    return proc.stdout


def check_version(current: str, new: str) -> None:
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError as exc:  # pragma: no cover
        raise ToolError("the `packaging` module is needed (it is in the workspace dev group)") from exc
    try:
        v_new = Version(new)
    except InvalidVersion as exc:
        raise ToolError(f"{new!r} is not a valid PEP 440 version") from exc
    if str(v_new) != new:
        raise ToolError(f"write the version in canonical form: {str(v_new)!r} instead of {new!r}")
    try:
        v_cur = Version(current)
    except InvalidVersion as exc:
        raise ToolError(f"the current version {current!r} is not valid PEP 440; fix it by hand") from exc
    if v_new <= v_cur:
        raise ToolError(f"the new version {new} must be greater than the current {current}")


def check_changelog(path: Path, version: str) -> None:
    if not path.is_file():
        raise ToolError(
            f"{path} does not exist: create it with a `## {version}` section describing the release"
        )
    if not re.search(rf"^##\s+\[?{re.escape(version)}\]?(?:\s|$)", path.read_text(), re.MULTILINE):
        raise ToolError(f"{path} has no `## {version}` entry: add one describing the release, then rerun")


def git_dirty_paths(root: Path, pkg: Package) -> list[str]:
    """Tracked changes anywhere plus untracked files inside the package (they would be released)."""
    tracked = _run(["git", "status", "--porcelain", "--untracked-files=no"], root, "git status")
    untracked = _run(
        ["git", "status", "--porcelain", "--untracked-files=all", "--", pkg.path], root, "git status"
    )
    return sorted({line[3:] for line in (tracked + untracked).splitlines() if line.strip()})


def build(root: Path, pkg: Package, out: Path) -> list[Path]:
    """sdist + wheel of ``pkg`` into ``out``; returns their paths."""
    uv = shutil.which("uv")
    if uv:
        cmd = [uv, "build", "--no-sources", "--sdist", "--wheel", "--out-dir", str(out), pkg.path]
    else:
        cmd = [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), pkg.path]
    _run(cmd, root, "building")
    files = sorted(p for p in out.iterdir() if p.name.endswith((".whl", ".tar.gz")))
    if not any(f.name.endswith(".whl") for f in files) or not any(f.name.endswith(".tar.gz") for f in files):
        raise ToolError(f"the build did not produce both an sdist and a wheel: {[f.name for f in files]}")
    return files


def twine_check(files: list[Path], root: Path) -> None:
    _run([sys.executable, "-m", "twine", "check", "--strict", *map(str, files)], root, "twine check")


def verify_tag(tag: str, github_output: bool) -> int:
    """Check a release tag ``<distribution>==<version>`` against the package's ``__version__``."""
    dist, sep, version = tag.partition("==")
    if not sep or not dist or not version:
        raise ToolError(f"tag {tag!r} is not of the form <distribution>==<version>")
    pkg = find_package(load_packages(REPO_ROOT), dist)
    if pkg.dist != dist:
        raise ToolError(f"tag {tag!r} names {dist!r}; the distribution is spelled {pkg.dist!r}")
    if pkg.version_file is None:
        raise ToolError(f"{pkg.path}: cannot tell where the version lives")
    current = read_version(REPO_ROOT / pkg.path / pkg.version_file)
    if current != version:
        raise ToolError(f"tag {tag} does not match {pkg.path}/{pkg.version_file}, which says {current!r}")
    kind = "shared-kernels" if pkg.path == "shared-kernels" else "pure"
    fields = {"package": pkg.dist, "version": version, "path": pkg.path, "kind": kind}
    for k, v in fields.items():
        print(f"{k}={v}")
    if github_output:
        out = os.environ.get("GITHUB_OUTPUT")
        if not out:
            raise ToolError("--github-output given but $GITHUB_OUTPUT is not set")
        with open(out, "a") as fh:
            fh.writelines(f"{k}={v}\n" for k, v in fields.items())
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "distribution", nargs="?", help="distribution name (as in `pip install ...`), e.g. sageattention"
    )
    ap.add_argument("version", nargs="?", help="the new PEP 440 version, e.g. 2.3.0")
    ap.add_argument(
        "--dry-run", action="store_true", help="check everything, change nothing, say what would happen"
    )
    ap.add_argument("--no-tag", action="store_true", help="bump and build only: no commit, no tag")
    ap.add_argument(
        "--out", type=Path, default=None, help="where the sdist and wheel go (default: <repo>/dist)"
    )
    ap.add_argument(
        "--verify-tag",
        metavar="TAG",
        help="(CI) check that TAG=<distribution>==<version> matches the package's __version__, "
        "print package/version/path/kind and exit",
    )
    ap.add_argument(
        "--github-output", action="store_true", help="with --verify-tag: append to $GITHUB_OUTPUT"
    )
    args = ap.parse_args(argv)
    if args.verify_tag:
        return verify_tag(args.verify_tag, args.github_output)
    if not args.distribution or not args.version:
        ap.error("the distribution and the new version are required")

    root = REPO_ROOT
    out = (args.out if args.out is not None else root / "dist").resolve()
    pkg = find_package(load_packages(root), args.distribution)
    if pkg.version_file is None:
        raise ToolError(
            f"{pkg.path}/pyproject.toml: cannot tell where the version lives (no [tool.hatch.version] "
            "path, no scikit-build metadata.version.input, and not exactly one src/<import>/__init__.py)"
        )
    version_file = root / pkg.path / pkg.version_file
    changelog = root / pkg.path / "CHANGELOG.md"
    current = read_version(version_file)
    check_version(current, args.version)
    check_changelog(changelog, args.version)
    tag = f"{pkg.dist}=={args.version}"
    rel_version = f"{pkg.path}/{pkg.version_file}"
    rel_changelog = f"{pkg.path}/CHANGELOG.md"
    if not args.no_tag:
        if _run(["git", "tag", "--list", tag], root, "git tag --list").strip():
            raise ToolError(f"tag {tag} already exists")
        dirty = [p for p in git_dirty_paths(root, pkg) if p not in (rel_version, rel_changelog)]
        if dirty:
            raise ToolError(
                "the working tree has other changes; commit or stash them first (or use --no-tag): "
                + ", ".join(dirty)
            )

    builder = "uv build --no-sources" if shutil.which("uv") else "python -m build"
    print(f"{pkg.dist} ({pkg.path}): {current} -> {args.version}")
    if args.dry_run:
        print(f"  changelog entry found in {rel_changelog}")
        print(f"  would set __version__ = {args.version!r} in {rel_version}")
        print(f"  would build the sdist and wheel with `{builder}` and run `twine check --strict`")
        print(f"  would copy them to {out}")
        if args.no_tag:
            print("  would not commit or tag (--no-tag)")
        else:
            print(f"  would commit {rel_version} and {rel_changelog} and create the annotated tag {tag}")
        print("dry run: nothing changed")
        return 0

    original = version_file.read_text()
    version_file.write_text(replace_version(original, args.version))
    try:
        if read_version(version_file) != args.version:  # pragma: no cover - replace_version guarantees it
            raise ToolError(f"could not set the version in {version_file}")
        with tempfile.TemporaryDirectory() as tmp:
            files = build(root, pkg, Path(tmp))
            twine_check(files, root)
            out.mkdir(parents=True, exist_ok=True)
            built = []
            for f in files:
                shutil.copy2(f, out / f.name)
                built.append(out / f.name)
    except BaseException:
        version_file.write_text(original)
        print(f"restored {rel_version} to {current}", file=sys.stderr)
        raise
    for f in built:
        print(f"  built {f}")
    print("  twine check --strict: passed")
    if args.no_tag:
        print(f"  {rel_version} now says {args.version} (not committed, no tag: --no-tag)")
        return 0
    _run(["git", "add", "--", rel_version, rel_changelog], root, "git add")
    _run(["git", "commit", "-m", f"Release {tag}", "--", rel_version, rel_changelog], root, "git commit")
    _run(["git", "tag", "-a", tag, "-m", f"{pkg.dist} {args.version}"], root, "git tag")
    print(f"  committed 'Release {tag}' and created the annotated tag {tag}")
    print(f"next: git push origin HEAD {tag}   (the tag starts .github/workflows/release.yml)")
    return 0


if __name__ == "__main__":
    run_main(main)
