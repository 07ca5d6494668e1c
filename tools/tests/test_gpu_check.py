"""tools/gpu_check.sh, the one prepared script for a lent GPU machine, checked on the CPU: its syntax, its
plan (--dry-run: every folder and script it names exists, it reads and writes nothing outside the repo,
/tmp and $OUT), its argument checks, and its summary of JUnit results."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "gpu_check.sh"
BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")
# absolute paths into the usual top-level folders of a Linux machine
ABS_PATH = re.compile(
    r"(?<![\w$}\"%#.)/-])/(?:tmp|usr|opt|etc|home|root|work|var|dev|proc|sys|bin|lib|mnt|srv|run)\b[^\s'\":;,)]*"
)


def run(*args: str, out: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OUT": str(out), **(env or {})}
    return subprocess.run(
        [BASH, str(SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=60, cwd=REPO
    )


@pytest.fixture
def plan(tmp_path: Path) -> str:
    res = run("--dry-run", out=tmp_path / "out")
    assert res.returncode == 0, res.stderr
    assert not (tmp_path / "out").exists(), "--dry-run must not write results"
    return res.stdout


def cuda_test_dirs() -> list[str]:
    dirs = [REPO / "shared-kernels" / "tests", *sorted((REPO / "packages").glob("*/tests"))]
    marked = [d for d in dirs if any(re.search(r"mark\.cuda\b", f.read_text()) for f in d.rglob("*.py"))]
    return [str(d.relative_to(REPO)) for d in marked]


def test_bash_syntax() -> None:
    res = subprocess.run([BASH, "-n", str(SCRIPT)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_plan_runs_every_phase(plan: str) -> None:
    for phase in ("[env]", "[build]", "[tests shared-kernels]", "[bench 1]", "[summary]"):
        assert phase in plan, phase
    build = plan.split("[build]")[1].split("[tests")[0]
    for flag in ("SHARED_KERNELS_CUDA=ON", "--no-build-isolation", "--no-deps", "--target /tmp/"):
        assert flag in build, flag
    pytest_lines = [ln for ln in plan.splitlines() if " -m pytest " in ln]
    assert pytest_lines
    for ln in pytest_lines:
        for flag in (
            "-m cuda",
            "-p no:cacheprovider",
            "--junitxml=",
            "-rA",
            "--continue-on-collection-errors",
        ):
            assert flag in ln, (flag, ln)


def test_plan_runs_the_cuda_tests_of_every_folder_that_has_them(plan: str) -> None:
    planned = re.findall(r" -m pytest .*? ((?:shared-kernels|packages/[\w-]+)/tests) ", plan)
    assert planned == cuda_test_dirs()
    assert "shared-kernels/tests" in planned
    for d in planned:
        assert (REPO / d).is_dir(), d


def test_plan_names_only_existing_scripts(plan: str) -> None:
    scripts = re.findall(r"((?:shared-kernels|packages/[\w-]+)/benchmarks(?:/[\w.-]+)?)", plan)
    assert any(s.endswith(".py") for s in scripts)
    for s in scripts:
        assert (REPO / s).exists(), s


def test_plan_stays_in_repo_tmp_and_out(plan: str, tmp_path: Path) -> None:
    allowed = (str(REPO) + "/", str(tmp_path / "out"), "/tmp/", "/dev/null")
    paths = ABS_PATH.findall(plan)
    assert any(p.startswith("/tmp/") for p in paths)  # the check below sees the paths
    outside = [p for p in paths if not p.startswith(allowed)]
    assert not outside, outside


def test_script_names_no_path_outside_tmp() -> None:
    body = SCRIPT.read_text().split("\n", 1)[1]  # after the shebang
    outside = [p for p in ABS_PATH.findall(body) if p != "/tmp" and not p.startswith(("/tmp/", "/dev/null"))]
    assert not outside, outside


def test_budget_caps_and_skips_phases(tmp_path: Path) -> None:
    res = run("--dry-run", "--budget", "100", out=tmp_path / "out")
    assert res.returncode == 0, res.stderr
    assert "phase build: SKIPPED (time budget spent)" in res.stdout
    assert "[tests shared-kernels] at most 30 s" in res.stdout
    assert "[bench 1] at most 90 s" in res.stdout


def test_prebuild_plan(tmp_path: Path) -> None:
    res = run("--dry-run", "--prebuild", out=tmp_path / "out")
    assert res.returncode == 0, res.stderr
    assert re.search(r"pip wheel -w \.whl/sk-[0-9a-f]{16}-90a .*--no-build-isolation", res.stdout)
    assert "[tests" not in res.stdout


def test_build_installs_a_prebuilt_wheel_of_the_same_sources(plan: str) -> None:
    wheel = re.search(r"set -- (\.whl/sk-([0-9a-f]{16})-90a)/shared_kernels-\*-cp\d+-\*\.whl", plan)
    assert wheel, "the build phase looks for a prebuilt wheel"
    prebuild = subprocess.run(
        [BASH, str(SCRIPT), "--dry-run", "--prebuild"], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert f"-w {wheel.group(1)} " in prebuild.stdout, "same folder (same source hash) in both modes"


def test_skip_leaves_out_phases(tmp_path: Path) -> None:
    res = run("--dry-run", "--skip", "build,bench", out=tmp_path / "out")
    assert res.returncode == 0, res.stderr
    assert "[build]" not in res.stdout and "[bench" not in res.stdout
    assert "[env]" in res.stdout and "[tests shared-kernels]" in res.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "abc"], "--budget must be whole seconds, got 'abc'"),
        (["--budget"], "--budget needs a value"),
        (["--test-timeout", "-1"], "--test-timeout must be whole seconds"),
        (["--skip", "build,lint"], "--skip takes env, build, tests, bench; got 'lint'"),
        (["--dry-run", "--gpu"], "unknown argument '--gpu'"),
    ],
)
def test_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    res = run(*args, out=tmp_path / "out")
    assert res.returncode == 2
    assert message in res.stderr
    assert not (tmp_path / "out").exists()


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="5">
<testcase classname="t" name="ok"/><testcase classname="t" name="bad"><failure message="boom"/></testcase>
<testcase classname="t" name="skip"><skipped message="no"/></testcase>
<testcase classname="t" name="fixture"><error message="failed on setup"/></testcase>
<testcase classname="" name="t2"><error message="collection failure">ModuleNotFoundError</error></testcase>
</testsuite></testsuites>"""
LOG = """pkg/tests/test_a.py::test_one PASSED [ 33%]
pkg/tests/test_a.py::test_two[x] PASSED [ 66%]
pkg/tests/test_a.py::test_three FAILED [100%]
FAILED pkg/tests/test_a.py::test_three - AssertionError
"""


def test_summary_counts_junit_and_logs(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "tests").mkdir(parents=True)
    (work / "tests" / "alpha.xml").write_text(JUNIT)
    (work / "tests" / "alpha.log").write_text("log of alpha\n")
    (work / "tests" / "beta.log").write_text(LOG)  # no XML: the run was killed
    env = {"GPU_CHECK_WORK": str(work), "GPU_CHECK_PYTHON": sys.executable}
    res = run("--skip", "env,build,tests,bench", out=out, env=env)
    assert res.returncode == 0, res.stderr
    summary = (out / "summary.txt").read_text()
    assert re.search(r"alpha +passed 1 failed 1 errors 1 skipped 1 collection_errors 1 \[junit\]", summary)
    assert re.search(
        r"beta +passed 2 failed 1 errors 0 skipped 0 collection_errors 0 \[from the log", summary
    )
    for line in (
        "failed: t::bad: boom",
        "errors: t::fixture: failed on setup",
        "collection_errors: ::t2: collection",
    ):
        assert line in summary, line
    assert "failed: pkg/tests/test_a.py::test_three" in summary
    assert "t::ok" not in summary and "t::skip" not in summary
    merged = ET.parse(out / "cuda.xml").getroot()
    assert [s.get("name") for s in merged.iter("testsuite")] == ["alpha"]
    assert len(list(merged.iter("testcase"))) == 5
