#!/usr/bin/env bash
# Every GPU check of this repo in one prepared run on a lent GPU machine (CONTRIBUTING.md, "Checking on a
# lent GPU"): 1 env report, 2 shared-kernels built for this GPU's arch only into /tmp, 3 the `cuda`-marked
# tests of every test folder that has any (one pytest per folder, all at once), 4 quick GPU timings of the
# benchmarks that have a GPU mode, 5 a summary. Results go to $OUT (7 files). Each phase is timed and logged,
# a failing phase never stops the run, and a phase that the time budget cannot hold is skipped.
#
#   tools/gpu_check.sh [--dry-run] [--budget SECONDS] [--skip env,build,tests,bench] [--test-timeout SECONDS]
#
# Needs python3 (GPU_CHECK_PYTHON) with torch, triton, pytest, pybind11, scikit-build-core, cmake, ninja, and
# nvcc; the CUDA build also needs the CUTLASS headers of nvidia-cutlass==4.2.0.0: put its wheel in .whl/ (carried)
# when python3 cannot import cutlass_library. --skip build reuses the build of an earlier run on the same machine.
# `GPU_CHECK_PYTHON=<python of the GPU machine's version> tools/gpu_check.sh --prebuild`, where nvcc exists and
# no GPU is needed, builds the wheel ahead into .whl/ (arch 90a unless SHARED_KERNELS_CUDA_ARCHS says otherwise);
# the build phase then installs it in seconds, if it was built from the same shared-kernels sources.
set -uo pipefail
T0=$SECONDS
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT=$PWD
OUT=${OUT:-/tmp/gpu-check/out}
WORK=${GPU_CHECK_WORK:-/tmp/gpu-check}
PY=${GPU_CHECK_PYTHON:-python3}
BUDGET=480 DRY=0 PREBUILD=0 SKIP="" TEST_TIMEOUT=120
usage() { echo "usage: tools/gpu_check.sh [--dry-run] [--budget SECONDS] [--skip env,build,tests,bench] [--test-timeout SECONDS] | --prebuild"; }
die() { echo "gpu_check: $*" >&2; usage >&2; exit 2; }
while (($#)); do
  case $1 in
    --dry-run) DRY=1 ;;
    --prebuild) PREBUILD=1 ;;
    --budget | --skip | --test-timeout)
      (($# > 1)) || die "$1 needs a value"
      case $1 in --budget) BUDGET=$2 ;; --skip) SKIP=$2 ;; *) TEST_TIMEOUT=$2 ;; esac
      shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1'" ;;
  esac
  shift
done
[[ $BUDGET =~ ^[0-9]+$ ]] || die "--budget must be whole seconds, got '$BUDGET'"
[[ $TEST_TIMEOUT =~ ^[0-9]+$ ]] || die "--test-timeout must be whole seconds, got '$TEST_TIMEOUT'"
for s in ${SKIP//,/ }; do [[ $s =~ ^(env|build|tests|bench)$ ]] || die "--skip takes env, build, tests, bench; got '$s'"; done
skipped() { [[ ",$SKIP," == *",$1,"* ]]; }

# Test folders with `cuda`-marked tests (the others have nothing to run on a GPU), oldest layer first.
TEST_DIRS=() NO_CUDA=()
for d in shared-kernels/tests packages/*/tests; do
  if grep -rqE --include='*.py' 'mark\.cuda\b' "$d"; then TEST_DIRS+=("$d"); else NO_CUDA+=("$d"); fi
done
SRC_PATH=$(printf "$ROOT/%s:" packages/*/src) && SRC_PATH=${SRC_PATH%:}  # pure Python: used from the tree
# Benchmarks with a GPU mode, most important first, with small settings. Of bench_triton.py only its timings
# run here (its main() also computes an accuracy table with float64 references: too slow for the budget).
BENCH=(
  "$PY shared-kernels/benchmarks/bench_sage_attention_fwd_gpu.py --quick --csv $WORK/bench/sage_attention_fwd_gpu.csv --png $WORK/bench/sage_attention_fwd_gpu.png"
  "$PY shared-kernels/benchmarks/bench_sage_attention_sm90.py --quick --csv $WORK/bench/sage_attention_sm90_gpu.csv"
  "$PY -c 'import sys, pathlib; sys.path.insert(0, \"packages/sage-attention/benchmarks\"); import bench_triton as b; b.write_csv(pathlib.Path(\"$WORK/bench/triton_gpu.csv\"), b.gpu_timings(1))'"
  "$PY packages/sla/benchmarks/bench_block_sparse_gpu.py --quick"
)

# shared-kernels is built for this GPU's arch only (SHARED_KERNELS_CUDA_ARCHS overrides) into $WORK/site, or a
# wheel that --prebuild made elsewhere from these very sources (.whl/sk-<hash of the sources>-<arch>/) is used.
ARCH=${SHARED_KERNELS_CUDA_ARCHS:-} ARCH_ERR=""
if ((PREBUILD)); then ARCH=${ARCH:-90a}
elif ((DRY)); then ARCH=${ARCH:-90a}  # at run time: from the GPU
elif [[ -z $ARCH ]] && ! skipped build; then
  ARCH=$($PY -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}{c[1]}' + ('a' if c[0] >= 9 else ''))" 2>&1)
  [[ $ARCH =~ ^[0-9]+a?$ ]] || { ARCH_ERR=${ARCH##*$'\n'} ARCH=""; }
fi
SRC_HASH=$(cd shared-kernels && find CMakeLists.txt pyproject.toml csrc include src -type f ! -name '*.pyc' ! -name '*.so' -print0 |
  LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
PRE=.whl/sk-$SRC_HASH-$ARCH
PIP="--no-index --disable-pip-version-check"  # nothing can be fetched on the GPU machine
PYTAG=$($PY -c 'import sys; print("cp%d%d" % sys.version_info[:2])' 2>&1)
# build_cmd PIP_ARGS: the CUDA build of shared-kernels with pip (no isolation: nothing can be fetched there)
build_cmd() {
  echo "set -e; rm -rf $WORK/build
[ -n '$ARCH' ] || { echo 'no CUDA device: no arch to build for (set SHARED_KERNELS_CUDA_ARCHS)'; exit 3; }
set -- .whl/nvidia_cutlass-*.whl
if [ -e \"\$1\" ]; then $PY -m pip install -q $PIP --no-deps --no-compile --upgrade --target $WORK/cutlass \"\$1\"; fi
PYTHONPATH=$WORK/cutlass $PY -c 'import cutlass_library' || { echo 'nvidia-cutlass==4.2.0.0 (CUTLASS headers) missing: carry its wheel in .whl/'; exit 3; }
SHARED_KERNELS_CUDA=ON SHARED_KERNELS_CUDA_ARCHS='$ARCH' CMAKE_BUILD_PARALLEL_LEVEL=\$(nproc) PYTHONPATH=$WORK/cutlass \\
  $PY -m pip $1 -v $PIP --no-build-isolation --no-deps --config-settings=build-dir=$WORK/build ./shared-kernels"
}
if ((PREBUILD)); then
  ((DRY)) && { echo "[prebuild] $(build_cmd "wheel -w $PRE")"; exit 0; }
  rm -rf "$PRE" && bash -c "$(build_cmd "wheel -w $PRE")" && echo "gpu_check: wrote $(echo "$PRE"/*.whl)"
  exit
fi

note() { if ((DRY)); then echo "$*"; else echo "$*" | tee -a "$OUT/summary.txt"; fi; }
# phase NAME CAP RESERVE LOG CMD: run the bash string CMD for at most CAP seconds, never into the budget's
# last RESERVE seconds (kept for the phases after it); log its exit status and time.
phase() {
  local name=$1 cap=$2 reserve=$3 log=$4 cmd=$5 rc t0=$SECONDS
  local room=$((BUDGET - (DRY ? 0 : SECONDS - T0) - reserve))
  ((room < cap)) && cap=$room
  if ((cap < 5)); then note "phase $name: SKIPPED (time budget spent)"; return 0; fi
  if ((DRY)); then printf '[%s] at most %s s, log %s\n    %s\n' "$name" "$cap" "$log" "$cmd"; return 0; fi
  echo "### [$name] $cmd" >>"$log"
  timeout -k 5 "$cap" bash -c "$cmd" >>"$log" 2>&1
  rc=$?
  note "phase $name: rc=$rc$( ((rc == 124 || rc == 137)) && echo ' TIMED OUT') in $((SECONDS - t0)) s (cap $cap s)"
  return $rc
}

if ((DRY)); then
  echo "plan (budget $BUDGET s; OUT=$OUT; work folder $WORK; python: $PY; arch $ARCH unless the GPU says otherwise)"
  echo "test folders with cuda tests: ${TEST_DIRS[*]}"
  echo "test folders without cuda tests (not run): ${NO_CUDA[*]:-none}"
else
  skipped tests || rm -rf "$WORK/tests"  # a skipped phase leaves the results of an earlier run for the summary
  skipped bench || rm -rf "$WORK/bench"
  mkdir -p "$OUT" "$WORK/tests" "$WORK/bench" || exit 2
  : >"$OUT/summary.txt"
  touch "$WORK/t0"
  note "gpu_check $(date -u '+%F %T') UTC, budget $BUDGET s, skip '${SKIP}', shared-kernels sources $SRC_HASH"
fi

# 1. environment report
ENV_PY="import importlib.metadata as m, torch, triton
print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__)
for n in ('pybind11', 'scikit-build-core', 'cmake', 'ninja', 'pytest', 'pytest-timeout', 'nvidia-cutlass'):
    try: print(n, m.version(n))
    except m.PackageNotFoundError: print(n, 'MISSING')
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print('device', p.name, 'capability', torch.cuda.get_device_capability(0), 'SMs', p.multi_processor_count, 'memory GiB', round(p.total_memory / 2**30, 1))
else: print('NO CUDA DEVICE visible to torch')"
if skipped env; then note "phase env: skipped (--skip)"
else phase env 40 0 "$OUT/env.txt" "date -u; uname -srm; nvidia-smi; command -v nvcc && nvcc --version; cmake --version; $PY -VV; $PY -c \"$ENV_PY\""; fi

# 2. shared-kernels into $WORK/site
BUILD="rm -rf $WORK/site; set -- $PRE/shared_kernels-*-$PYTAG-*.whl
if [ -e \"\$1\" ]; then echo \"prebuilt wheel \$1\"; $PY -m pip install $PIP --no-deps --no-compile --target $WORK/site \"\$1\"
else ($(build_cmd "install --no-compile --target $WORK/site")) || exit; fi
PYTHONPATH=$WORK/site $PY -c 'import json, shared_kernels as sk; assert sk.__file__.startswith(\"$WORK/site/\"), sk.__file__
print(json.dumps(sk.capabilities(), indent=1, default=str))'"
[[ -n $ARCH_ERR ]] && note "no arch from torch: $ARCH_ERR"
if skipped build; then note "phase build: skipped (--skip), reusing $WORK/site if it holds a build"
else phase build 300 150 "$OUT/build.log" "$BUILD"; fi

# 3. cuda-marked tests, one pytest per folder, all at once (a crash or a hang stays in its folder)
SK_PATH=$WORK/site
if ((!DRY)) && [[ ! -d $WORK/site/shared_kernels ]]; then
  SK_PATH=$ROOT/shared-kernels/src
  note "no shared-kernels build in $WORK/site: tests use shared-kernels/src without its compiled module"
fi
export PYTHONPATH=$SK_PATH:$SRC_PATH PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # conftest.py sets it only where no GPU is visible
((DRY)) && echo "tests and benchmarks run with PYTHONPATH=$PYTHONPATH"
TIMEOUT_OPT=""
$PY -c 'import pytest_timeout' 2>/dev/null && TIMEOUT_OPT="--timeout=$TEST_TIMEOUT"
if skipped tests; then note "phase tests: skipped (--skip)"
else
  for d in "${TEST_DIRS[@]}"; do
    name=${d%/tests}; name=${name#packages/}
    cmd="$PY -m pytest -c pyproject.toml --rootdir=. $d -m cuda -p no:cacheprovider --continue-on-collection-errors $TIMEOUT_OPT -v -rA --durations=10 --junitxml=$WORK/tests/$name.xml"
    if ((DRY)); then phase "tests $name" 600 70 "$WORK/tests/$name.log" "$cmd"
    else phase "tests $name" 600 70 "$WORK/tests/$name.log" "$cmd" & fi
  done
  wait
  ((DRY)) || cat "$WORK"/tests/*.log >"$OUT/pytest.txt" 2>&1
fi

# 4. quick GPU timings; CSVs (also those the scripts write to benchmarks/results/) and PNGs go into one tarball
if skipped bench; then note "phase bench: skipped (--skip)"
else
  for i in "${!BENCH[@]}"; do
    phase "bench $((i + 1))" 120 10 "$OUT/bench.txt" "${BENCH[i]}"
  done
  if ((!DRY)); then
    find packages shared-kernels -path '*/benchmarks/results/*' -type f -newer "$WORK/t0" -exec cp {} "$WORK/bench/" \;
    for f in "$WORK"/bench/*.csv; do [[ -e $f ]] && { echo "### $f"; cat "$f"; } >>"$OUT/bench.txt"; done
    tar -czf "$OUT/bench_results.tar.gz" -C "$WORK" bench
  fi
fi

# 5. summary: pass/fail/skip per test folder (from the JUnit XML, merged into $OUT/cuda.xml) and phase times
SUMMARY_PY='import glob, os, re, sys, xml.etree.ElementTree as ET
work, out = sys.argv[1:3]
merged = ET.Element("testsuites")
for log in sorted(glob.glob(f"{work}/tests/*.log")):
    name, c = os.path.basename(log)[:-4], dict(passed=0, failed=0, errors=0, skipped=0, collection_errors=0)
    xml, bad = f"{work}/tests/{name}.xml", []
    if os.path.exists(xml):
        for suite in ET.parse(xml).getroot().iter("testsuite"):
            suite.set("name", name)
            merged.append(suite)
            for tc in suite.iter("testcase"):
                tags = {k.tag: k.get("message") or "" for k in tc}
                key = ("collection_errors" if "collection failure" in tags.get("error", "") else "errors"
                       if "error" in tags else "failed" if "failure" in tags else "skipped" if "skipped" in tags else "passed")
                c[key] += 1
                if key in ("failed", "errors", "collection_errors"):
                    cls, test, msg = tc.get("classname"), tc.get("name"), tags.get("failure") or tags.get("error")
                    bad.append(f"    {key}: {cls}::{test}: {msg[:150]}")
        src = "junit"
    else:
        text = open(log, errors="replace").read()
        for word, key in (("PASSED", "passed"), ("FAILED", "failed"), ("ERROR", "errors"), ("SKIPPED", "skipped")):
            c[key] = len(re.findall(rf"::\S+ {word}\b", text))
        bad = [f"    failed: {t}" for t in re.findall(r"(\S+::\S+) FAILED", text)]
        src = "from the log: no JUnit XML (timed out or crashed)"
    print(f"{name:16s}", " ".join(f"{k} {v}" for k, v in c.items()), f"[{src}]")
    bad and print("\n".join(bad[:15] + ([f"    ... {len(bad) - 15} more"] if len(bad) > 15 else [])))
ET.ElementTree(merged).write(f"{out}/cuda.xml", encoding="utf-8", xml_declaration=True)'
if ((DRY)); then echo "[summary] $OUT/summary.txt: phase times, and per test folder passed/failed/errors/skipped/collection errors; $OUT/cuda.xml"
else
  note "--- cuda tests per folder (skipped includes xfail; collection errors: modules not importable there)"
  $PY -c "$SUMMARY_PY" "$WORK" "$OUT" 2>&1 | tee -a "$OUT/summary.txt"
  note "total $((SECONDS - T0)) s of $BUDGET s; files in $OUT: $(cd "$OUT" && echo *)"
fi
