"""tools/release.py on a throw-away git repository holding a tiny hatchling package laid out like ours."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}

PYPROJECT = """\
[build-system]
requires = ["hatchling>=1.24"]
build-backend = "hatchling.build"

[project]
name = "tiny-pkg"
dynamic = ["version"]
description = "A tiny package for the release tests"
readme = "README.md"
requires-python = ">=3.10"
license = "Apache-2.0"
dependencies = ["shared-kernels>=0.1,<0.2"]

[tool.hatch.version]
path = "src/tiny_pkg/__init__.py"

[tool.hatch.build.targets.wheel]
packages = ["src/tiny_pkg"]
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, env={**os.environ, **GIT_ENV}, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    pkg = r / "packages" / "tiny"
    (pkg / "src" / "tiny_pkg").mkdir(parents=True)
    (r / "tools").mkdir()
    (r / "pyproject.toml").write_text('[tool.uv.workspace]\nmembers = ["packages/*"]\n')
    (r / ".gitignore").write_text("dist/\n__pycache__/\n")
    (pkg / "pyproject.toml").write_text(PYPROJECT)
    (pkg / "README.md").write_text("# tiny-pkg\n\nA tiny package.\n")
    (pkg / "CHANGELOG.md").write_text("# Changelog\n\n## 0.2.0\n\n- Something new.\n\n## 0.1.0\n\n- First.\n")
    (pkg / "src" / "tiny_pkg" / "__init__.py").write_text('"""tiny."""\n\n__version__ = "0.1.0"\n')
    for name in ("release.py", "_common.py"):
        shutil.copy(TOOLS / name, r / "tools" / name)
    git(r, "init", "-q", "-b", "main")
    git(r, "add", "-A")
    git(r, "commit", "-qm", "init")
    return r


def release(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(repo / "tools" / "release.py"), *args],
        cwd=repo,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        timeout=300,
    )


def version_in(repo: Path) -> str:
    text = (repo / "packages/tiny/src/tiny_pkg/__init__.py").read_text()
    return text.split('__version__ = "')[1].split('"')[0]


def test_dry_run_changes_nothing(repo):
    p = release(repo, "tiny-pkg", "0.2.0", "--dry-run")
    assert p.returncode == 0, p.stderr
    assert "0.1.0 -> 0.2.0" in p.stdout and "tiny-pkg==0.2.0" in p.stdout and "nothing changed" in p.stdout
    assert version_in(repo) == "0.1.0"
    assert git(repo, "status", "--porcelain") == "" and git(repo, "tag") == ""
    assert not (repo / "dist").exists()


def test_release_bumps_builds_commits_and_tags(repo):
    p = release(repo, "tiny-pkg", "0.2.0")
    assert p.returncode == 0, p.stdout + p.stderr
    assert git(repo, "cat-file", "-t", "tiny-pkg==0.2.0") == "tag"  # annotated
    assert git(repo, "rev-parse", "tiny-pkg==0.2.0^{commit}") == git(repo, "rev-parse", "HEAD")
    assert git(repo, "log", "-1", "--format=%s") == "Release tiny-pkg==0.2.0"
    assert '__version__ = "0.2.0"' in git(repo, "show", "HEAD:packages/tiny/src/tiny_pkg/__init__.py")
    assert git(repo, "status", "--porcelain") == ""
    wheel = repo / "dist" / "tiny_pkg-0.2.0-py3-none-any.whl"
    assert wheel.is_file() and (repo / "dist" / "tiny_pkg-0.2.0.tar.gz").is_file()
    with zipfile.ZipFile(wheel) as z:
        meta = z.read("tiny_pkg-0.2.0.dist-info/METADATA").decode()
    assert "\nVersion: 0.2.0\n" in meta and "Requires-Dist: shared-kernels<0.2,>=0.1" in meta
    # The same release again: the tag exists, and 0.2.0 is no longer greater than the current version.
    again = release(repo, "tiny-pkg", "0.2.0")
    assert again.returncode == 1 and "must be greater" in again.stderr


def test_no_tag_builds_on_a_dirty_tree_and_leaves_the_bump_uncommitted(repo, tmp_path):
    (repo / "pyproject.toml").write_text((repo / "pyproject.toml").read_text() + "# edited\n")
    out = tmp_path / "out"
    p = release(repo, "tiny-pkg", "0.2.0", "--no-tag", "--out", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    assert sorted(f.name for f in out.iterdir()) == [
        "tiny_pkg-0.2.0-py3-none-any.whl",
        "tiny_pkg-0.2.0.tar.gz",
    ]
    assert version_in(repo) == "0.2.0" and git(repo, "tag") == ""
    assert git(repo, "log", "--format=%s") == "init"


def test_dirty_tree_is_refused_when_tagging(repo):
    (repo / "pyproject.toml").write_text("# changed\n")
    p = release(repo, "tiny-pkg", "0.2.0")
    assert p.returncode == 1 and "commit or stash" in p.stderr and "pyproject.toml" in p.stderr
    assert version_in(repo) == "0.1.0"


def test_existing_tag_is_refused(repo):
    git(repo, "tag", "-a", "tiny-pkg==0.2.0", "-m", "x")
    p = release(repo, "tiny-pkg", "0.2.0", "--dry-run")
    assert p.returncode == 1 and "already exists" in p.stderr


@pytest.mark.parametrize(
    ("version", "message"),
    [
        ("0.1.0", "must be greater"),
        ("0.0.9", "must be greater"),
        ("banana", "not a valid PEP 440"),
        ("v0.2.0", "canonical form"),
        ("0.3.0", "## 0.3.0"),
    ],
)
def test_bad_versions_and_missing_changelog_entry(repo, version, message):
    p = release(repo, "tiny-pkg", version, "--dry-run")
    assert p.returncode == 1 and message in p.stderr, p.stderr
    assert p.stderr.startswith("error: ")


def test_missing_changelog_file(repo):
    (repo / "packages/tiny/CHANGELOG.md").unlink()
    p = release(repo, "tiny-pkg", "0.2.0", "--dry-run")
    assert p.returncode == 1 and "CHANGELOG.md does not exist" in p.stderr


def test_unknown_distribution(repo):
    p = release(repo, "no-such-pkg", "1.0.0", "--dry-run")
    assert p.returncode == 1 and "no package with distribution name 'no-such-pkg'" in p.stderr
    assert "tiny-pkg" in p.stderr


def test_failed_build_restores_the_version(repo):
    (repo / "packages/tiny/README.md").unlink()  # hatchling cannot build without its readme
    git(repo, "commit", "-qam", "drop readme")
    p = release(repo, "tiny-pkg", "0.2.0")
    assert p.returncode == 1 and "building failed" in p.stderr
    assert version_in(repo) == "0.1.0" and git(repo, "tag") == ""
    assert git(repo, "status", "--porcelain") == ""


def test_verify_tag(repo, tmp_path):
    out = tmp_path / "gh"
    p = subprocess.run(
        [
            sys.executable,
            str(repo / "tools/release.py"),
            "--verify-tag",
            "tiny-pkg==0.1.0",
            "--github-output",
        ],
        env={**os.environ, "GITHUB_OUTPUT": str(out)},
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    expected = "package=tiny-pkg\nversion=0.1.0\npath=packages/tiny\nkind=pure\n"
    assert p.stdout == expected and out.read_text() == expected
    for tag, message in [
        ("tiny-pkg==0.2.0", "says '0.1.0'"),
        ("tiny_pkg==0.1.0", "spelled 'tiny-pkg'"),
        ("tiny-pkg-0.1.0", "not of the form"),
        ("other==0.1.0", "no package"),
    ]:
        p = release(repo, "--verify-tag", tag)
        assert p.returncode == 1 and message in p.stderr, (tag, p.stderr)
