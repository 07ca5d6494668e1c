"""tools/changes.py: the rules mapping changed paths to packages, the matrix and $GITHUB_OUTPUT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _common import tomllib

TOOL = Path(__file__).resolve().parent.parent / "changes.py"
REPO = TOOL.parent.parent
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def _pyproject(name: str, deps: list[str], extras: dict[str, list[str]] | None = None) -> str:
    text = f'[project]\nname = "{name}"\ndynamic = ["version"]\ndependencies = {json.dumps(deps)}\n'
    if extras:
        text += "[project.optional-dependencies]\n" + "".join(
            f"{k} = {json.dumps(v)}\n" for k, v in extras.items()
        )
    return text


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """shared-kernels; alpha and gamma on shared-kernels; beta on alpha (extra); delta on beta."""
    layout = {
        "shared-kernels": _pyproject("shared-kernels", ["torch>=2.5"]),
        "packages/alpha": _pyproject("alpha-method", ["shared-kernels>=0.1,<0.2", "torch"]),
        "packages/beta": _pyproject("beta", ["shared-kernels>=0.1"], {"quant": ["Alpha_Method[x]>=1.0"]}),
        "packages/delta": _pyproject("delta", ["beta ; python_version >= '3.10'"]),
        "packages/gamma": _pyproject("gamma", ["shared_kernels"]),
    }
    for rel, text in layout.items():
        (tmp_path / rel).mkdir(parents=True)
        (tmp_path / rel / "pyproject.toml").write_text(text)
    (tmp_path / "packages" / "scratch").mkdir()  # a folder that is not a package
    (tmp_path / "packages" / "scratch" / "notes.txt").write_text("x")
    return tmp_path


def run(*args: str, root: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    extra = ["--root", str(root)] if root else []
    return subprocess.run(
        [sys.executable, str(TOOL), *extra, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def packages(repo: Path, *files: str) -> list[str]:
    p = run("--files", *files, root=repo)
    assert p.returncode == 0, p.stderr
    return [row["package"] for row in json.loads(p.stdout)["include"]]


ALL = ["shared-kernels", "alpha-method", "beta", "delta", "gamma"]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (["shared-kernels/csrc/x.cpp"], ALL),
        (["packages/alpha/src/alpha/x.py"], ["alpha-method", "beta", "delta"]),  # dependents, transitively
        (["packages/beta/tests/test_x.py"], ["beta", "delta"]),
        (["packages/delta/README.md"], ["delta"]),
        (["packages/gamma/pyproject.toml", "README.md"], ["gamma"]),
        (["README.md", "CONTRIBUTING.md", "NOTES.md", "LICENSE"], []),
        (["pyproject.toml"], ALL),
        (["uv.lock"], ALL),
        (["tools/changes.py"], ALL),
        (["./.github/workflows/ci.yml"], ALL),
        (["README.md", ".ci/run"], ALL),
        (["docs/guide.md"], ALL),  # unknown root folder: the safe choice
        (["packages/removed-pkg/src/x.py"], []),  # a package deleted by the change
    ],
)
def test_rules(repo, files, expected):
    assert packages(repo, *files) == expected


@pytest.mark.parametrize("path", ["packages/scratch/notes.txt", "packages/README.md"])
def test_unknown_path_under_packages_is_an_error(repo, path):
    p = run("--files", "packages/alpha/x.py", path, root=repo)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.startswith("error: ") and "tools/changes.py" in p.stderr and path in p.stderr


def test_matrix_rows_and_python_cross(repo):
    p = run("--files", "packages/beta/x.py", "--python", "3.10", "3.13", root=repo)
    assert json.loads(p.stdout) == {
        "include": [
            {"package": "beta", "path": "packages/beta", "python": "3.10"},
            {"package": "beta", "path": "packages/beta", "python": "3.13"},
            {"package": "delta", "path": "packages/delta", "python": "3.10"},
            {"package": "delta", "path": "packages/delta", "python": "3.13"},
        ]
    }


def test_github_output(repo, tmp_path):
    out = tmp_path / "gh_output"
    out.write_text("earlier=1\n")
    assert (
        run(
            "--files", "packages/gamma/a.py", "--github-output", root=repo, env={"GITHUB_OUTPUT": str(out)}
        ).returncode
        == 0
    )
    assert (
        run("--files", "README.md", "--github-output", root=repo, env={"GITHUB_OUTPUT": str(out)}).returncode
        == 0
    )
    lines = out.read_text().splitlines()
    assert lines[0] == "earlier=1"
    assert json.loads(lines[1].removeprefix("matrix=")) == {
        "include": [{"package": "gamma", "path": "packages/gamma"}]
    }
    assert lines[2:] == ["any=true", 'matrix={"include":[]}', "any=false"]
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_OUTPUT"}
    p = subprocess.run(
        [sys.executable, str(TOOL), "--root", str(repo), "--files", "README.md", "--github-output"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert p.returncode == 1 and "GITHUB_OUTPUT" in p.stderr


def test_git_diff_between_revisions(repo):
    def git(*args):
        return subprocess.run(
            ["git", *args],
            cwd=repo,
            env={**os.environ, **GIT_ENV},
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-qm", "base")
    base = git("rev-parse", "HEAD")
    (repo / "packages/gamma/new.py").write_text("x = 1\n")
    (repo / "README.md").write_text("# docs\n")
    git("add", "-A")
    git("commit", "-qm", "change gamma")
    assert json.loads(run("--base", base, root=repo).stdout)["include"] == [
        {"package": "gamma", "path": "packages/gamma"}
    ]
    assert json.loads(run("--base", "HEAD", "--head", "HEAD", root=repo).stdout)["include"] == []
    null = run("--base", "0" * 40, root=repo)  # a push that creates a branch
    assert [r["package"] for r in json.loads(null.stdout)["include"]] == ALL
    bad = run("--base", "no-such-rev", root=repo)
    assert bad.returncode == 1 and "git" in bad.stderr


def test_real_repository_package_list():
    """On this repository: a shared-kernels change touches every pyproject under packages/."""
    expected = ["shared-kernels"] + [
        tomllib.loads(p.read_text())["project"]["name"]
        for p in sorted(REPO.glob("packages/*/pyproject.toml"))
    ]
    p = run("--files", "shared-kernels/CMakeLists.txt")
    assert [r["package"] for r in json.loads(p.stdout)["include"]] == expected
    assert all(
        r["path"]
        in ("shared-kernels", *(f"packages/{d.parent.name}" for d in REPO.glob("packages/*/pyproject.toml")))
        for r in json.loads(p.stdout)["include"]
    )
