#!/usr/bin/env bash
# Every GPU check in one go, within 8 minutes on the lent machine's image (python3, torch + Triton, rich,
# transformers, pytest, pytest-benchmark; no datasets, no network, the repository not pip-installed):
#   1. versions;  2. the CUDA tests (tests/gpu, a pytest process per file: kernels vs references, graph vs
#   eager, resume, bf16, PDL, packed runs vs solo runs);  3. the training-step benchmarks, one pytest run
#   per shape, JSON out, without the torch.compile rows;  4. a kernel profile of one step per shape
#   (scripts/step_profile.py);  5. the torch.compile reduce-overhead rows, one pytest run per shape;
#   6. one end-to-end `grokfast-train --dataset modular --steps 100000` (the paper preset: full batch at
#   30 %, eval every 10 steps), timed (its steady rate, if the cap stops it first);  7. the pack benchmarks
#   (benchmarks/test_pack_bench.py: R runs packed vs the same R runs solo), JSON out, then the linear layers'
#   products (benchmarks/test_matmul_bench.py: kernels.matmul vs PyTorch) and its candidate tiles
#   (scripts/tune_matmul.py) and the readout attention's (scripts/tune_readout.py);  8. if time is left,
#   a profile of a 64-run pack, the max-autotune compile rows, then the kernel benchmarks;  9. the tables,
#   last: the step table (scripts/bench_table.py), then the pack table (scripts/pack_table.py).
# The compile rows have their own pytest runs and JSON files: their warm-up compiles for a minute or
# more, and on the H200 (2026-11-27) a cap that fell during it killed pytest before it wrote its JSON,
# losing the rows measured before it.
# Each section has a time cap (SIGINT first: pytest-benchmark still writes its JSON, the trainer its
# checkpoint), so the script always ends with the table within the budget.
#
# Usage: scripts/gpu_check.sh [OUT_DIR]   (default $OUT, else ./gpu-check); everything is written there.
# GPU_CHECK_REHEARSAL=1: the same script on a CPU machine with CPU-sized work (the CPU benchmark rows,
# the pack rows at R = 1 and 8 only, 300 training steps), to check the script itself.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-check}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
PY=${PYTHON:-python3}
export PY
export TRITON_INTERPRET=0  # real kernels (tests/conftest.py would default to the interpreter)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
rehearsal=${GPU_CHECK_REHEARSAL:-0}
budget=${GPU_CHECK_BUDGET_S:-480}
deadline=$((SECONDS + budget))
report="$out/report.txt"
: >"$report"

say() { echo "$*" | tee -a "$report"; }
# section NAME CAP_S RESERVE_S CMD...: run CMD for at most min(CAP_S, time left - RESERVE_S) seconds.
section() {
  local name=$1 cap=$2 reserve=$3
  shift 3
  local left=$((deadline - SECONDS - reserve))
  local t=$((cap < left ? cap : left))
  if ((t < 10)); then
    say "== $name: skipped (${left}s left of the ${budget}s budget)"
    return 0
  fi
  say "== $name (at most ${t}s)"
  local t0=$SECONDS
  # pytest (with -p scripts.pytest_deadline) starts no test after this, so it ends with its summary before the cap
  local margin=$((t / 3 < 20 ? t / 3 : 20))
  export PYTEST_DEADLINE=$(($(date +%s) + t - margin))
  timeout --signal=INT --kill-after=15 "$t" "$@" 2>&1 | tee -a "$report"
  local rc=${PIPESTATUS[0]}
  say "== $name: exit $rc after $((SECONDS - t0))s$( ((rc == 124)) && echo ' (time cap reached)')"
}

if ((rehearsal)); then
  bench_k="cpu and not compile and not full"
  pack_k="cpu and modular-1- or cpu and modular-8-"
  steps=300
  e2e_device=cpu
  profile_steps=4
  profile_pack=3
else
  bench_k="cuda"
  pack_k="cuda"
  steps=100000
  e2e_device=cuda
  profile_steps=40
  profile_pack=64
fi

say "== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) budget ${budget}s rehearsal=${rehearsal} out=$out"
{ command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; } 2>&1 \
  | tee -a "$report" || say "nvidia-smi: not available"
"$PY" - <<'EOF' 2>&1 | tee -a "$report"
import importlib, importlib.metadata, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU)")
for name, dist in (("triton", "triton"), ("transformers", "transformers"), ("pytest_benchmark", "pytest-benchmark"),
                   ("numpy", "numpy"), ("rich", "rich")):
    try:
        importlib.import_module(name)
        print(name, importlib.metadata.version(dist))  # rich has no __version__
    except Exception as e:  # report, do not stop: the sections below say what it breaks
        print(name, "unavailable:", type(e).__name__, e)
EOF

# Caps and reserves (seconds): a section stops early enough to leave its reserve to the ones after it
# (the sum of their caps and the tables' ~5 s). Every section at its cap: versions ~5, tests 120, step
# benchmarks 55 (modular) + 65 (imdb), profile 35, compile reduce-overhead 40 + 50, end-to-end 40, pack
# benchmarks 65, tables 5: 480 s. pytest starts no test in the last min(cap / 3, 20) s of a section's
# cap. What is left at the end goes to the matmul rows and tiles, the readout tiles, the pack profile, the max-autotune rows, then the kernel benchmarks. The first
# H200 run (2026-11-27) took 86 s for the tests (one eager run fewer than now), ~30 s of modular rows
# and ~65 s of pack rows; the compile rows' warm-ups are the unknowns.
bench() {  # bench NAME CAP RESERVE JSON -k EXPR: one pytest-benchmark run of the step benchmarks
  local name=$1 cap=$2 reserve=$3 json=$4
  shift 4
  section "$name" "$cap" "$reserve" "$PY" -m pytest -q -p no:cacheprovider -p scripts.pytest_deadline \
    benchmarks/test_step_bench.py --benchmark-json="$out/$json" --benchmark-columns=min,median,rounds "$@"
}
# one pytest process per file, the kernels' first: a kernel that faults (an illegal address leaves the
# process's CUDA context unusable) costs its own file's tests, not every test after it
cuda_tests() {
  local rc=0 f stopped=0
  trap 'stopped=1' INT  # the section's cap: the running pytest ends with its summary, and no file starts after it
  for f in tests/gpu/test_cuda.py tests/gpu/test_attention_cuda.py tests/gpu/test_graph_cuda.py tests/gpu/test_pack_cuda.py \
      tests/gpu/test_pdl_cuda.py; do
    ((stopped)) && break
    "$PY" -m pytest -v -p no:cacheprovider -p scripts.pytest_deadline "$f" || rc=$?
  done
  return "$rc"
}
export -f cuda_tests
section "CUDA tests" 120 355 bash -c cuda_tests
bench "step benchmarks (modular)" 55 300 bench-modular.json -k "$bench_k and modular and not compile"
bench "step benchmarks (imdb)" 65 235 bench-imdb.json -k "$bench_k and imdb and not compile"
section "step profile" 35 200 "$PY" scripts/step_profile.py --steps "$profile_steps"
if ((rehearsal)); then compile_k="cpu and compile-default"; else compile_k="cuda and compile-reduce-overhead"; fi
bench "torch.compile rows (modular)" 40 160 bench-compile-modular.json -k "$compile_k and modular"
bench "torch.compile rows (imdb)" 50 110 bench-compile-imdb.json -k "$compile_k and imdb"
e2e() {
  local t0 t1
  t0=$(date +%s.%N)
  "$PY" -m grokfast_train --dataset modular --steps "$steps" --quiet --force --out "$out/e2e-modular" \
    --device "$e2e_device" >"$out/e2e-modular.log" 2>&1
  local rc=$?
  t1=$(date +%s.%N)
  tail -n 4 "$out/e2e-modular.log"
  "$PY" - "$out/e2e-modular" "$t0" "$t1" "$rc" <<'EOF2'
import json, sys
from pathlib import Path
run, t0, t1, rc = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
cfg = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").exists() else []
last = rows[-1] if rows else {}
print(f"end-to-end: exit {rc}; {last.get('step', 0):,} steps, wall {t1 - t0:.1f} s from process start to exit "
      f"(import, data, warm-up and capture included); training {last.get('elapsed_s', float('nan')):.1f} s "
      f"= {last.get('step', 0) / max(last.get('elapsed_s', 0) or 1e-9, 1e-9):,.0f} steps/s with an evaluation "
      f"every {cfg.get('eval_every')} steps; device {cfg.get('device')}, backend {cfg.get('backend')}, "
      f"cuda_graph {cfg.get('cuda_graph')}, dtype {cfg.get('dtype')}; final test acc {last.get('test_acc')}")
if len(rows) > 20:  # the steady rate, past start-up and capture: the second half of what ran
    a, b = rows[len(rows) // 2], rows[-1]
    rate = (b["step"] - a["step"]) / max(b["elapsed_s"] - a["elapsed_s"], 1e-9)
    print(f"end-to-end steady rate: {rate:,.0f} steps/s (steps {a['step']:,}-{b['step']:,}, evaluations included); "
          f"{cfg.get('steps', 0):,} steps at that rate: {cfg.get('steps', 0) / rate:,.0f} s")
EOF2
  return "$rc"  # the section's exit status is the training run's, not this summary's
}
export -f e2e
export out steps e2e_device
section "end-to-end: grokfast-train --dataset modular --steps $steps" 40 70 bash -c e2e
# R = 1, 8, 64 modular then 1, 8 IMDB, pack and solo rows side by side: a time cap loses IMDB first
section "pack benchmarks" 65 5 "$PY" -m pytest -q -p no:cacheprovider -p scripts.pytest_deadline benchmarks/test_pack_bench.py \
  -k "$pack_k" --benchmark-json="$out/bench-pack.json" --benchmark-columns=min,median,rounds
# the linear layers' products: kernels.matmul (tf32x3, tensor cores) vs PyTorch fp32 and TF32, at the step's shapes
# (39 rows: the products, k and v in one launch or two, post-LN's backward in one launch or two)
section "matmul benchmarks" 40 5 "$PY" -m pytest -q -p no:cacheprovider -p scripts.pytest_deadline \
  benchmarks/test_matmul_bench.py --benchmark-json="$out/bench-matmul.json" --benchmark-max-time=0.1 \
  --benchmark-columns=min,median,rounds
# kernels.matmul's candidate tiles at the same shapes, spill-checked for this GPU, then timed (time left only)
section "matmul tiles" 40 5 "$PY" scripts/tune_matmul.py
# kernels.readout_attention's candidate tiles at IMDB's shape, spill-checked for this GPU, then timed (time left only)
section "readout tiles" 30 5 "$PY" scripts/tune_readout.py
# where a 64-run pack's ~90 us per run goes, and whether the table projection pays there (time left only)
section "pack profile" 45 5 "$PY" scripts/step_profile.py --dataset modular --pack "$profile_pack" --steps "$profile_steps"
if ((!rehearsal)); then
  bench "torch.compile max-autotune rows (modular)" 90 5 bench-autotune-modular.json \
    -k "cuda and compile-max-autotune and modular and not cpu"
  bench "torch.compile max-autotune rows (imdb)" 90 5 bench-autotune-imdb.json -k "cuda and compile-max-autotune and imdb and not cpu"
  section "kernel benchmarks" 60 5 "$PY" -m pytest -q -p no:cacheprovider -p scripts.pytest_deadline benchmarks/test_adamw_bench.py \
    benchmarks/test_attention_bench.py benchmarks/test_layer_norm_bench.py --benchmark-json="$out/bench-kernels.json" \
    --benchmark-columns=min,median,rounds
fi
say "== table (elapsed ${SECONDS}s)"
"$PY" scripts/bench_table.py "$out"/bench-{modular,imdb,compile-modular,compile-imdb}.json \
  $( ((rehearsal)) || echo "$out"/bench-autotune-{modular,imdb}.json) 2>&1 | tee "$out/table.md" | tee -a "$report"
say ""
say "== pack table (elapsed ${SECONDS}s)"
"$PY" scripts/pack_table.py "$out/bench-pack.json" 2>&1 | tee "$out/pack-table.md" | tee -a "$report"
say "== done (elapsed ${SECONDS}s of the ${budget}s budget)"
