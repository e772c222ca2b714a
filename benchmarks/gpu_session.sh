#!/usr/bin/env bash
# Everything issue 16 asks to run on GPUs, in one go, for a session that has a GPU machine:
#   bash benchmarks/gpu_session.sh [RESULTS_DIR]      (default benchmarks/results)
# 1. correctness on CUDA (gpu_checks.py, about a minute); 2. workload G, engine against the
# straightforward implementation on 65,536 tokens; 3. the full 500k-token G sweep (the
# 5-minute target); 4. with 2+ GPUs, the data-parallel G sweep on 1..N GPUs. Each step has
# a time limit so one slow step cannot use up the machine; a step that fails is reported
# and the next runs. Record what it prints in benchmarks/README.md (device, wall time,
# fraction of the bf16 matmul peak).
set -u
results="${1:-benchmarks/results}"
mkdir -p "$results"
python=${PYTHON:-python}
gpus=$("$python" -c "import torch; print(torch.cuda.device_count())")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
step() {  # step SECONDS NAME COMMAND...
  local limit=$1 name=$2
  shift 2
  echo "=== $name (limit ${limit} s)"
  local start=$SECONDS
  timeout "$limit" "$@"
  echo "=== $name: exit $? after $((SECONDS - start)) s"
}
step 180 "gpu_checks" "$python" benchmarks/gpu_checks.py
step 240 "workload G, 65,536 tokens, with the straightforward comparison" \
  "$python" benchmarks/bench_audit.py --workload G --g-tokens 65536 \
  --out "$results/bench_audit_G_65k.json"
step 480 "workload G, 500k tokens (target: under 5 minutes)" \
  "$python" benchmarks/bench_audit.py --workload G --skip-straightforward \
  --out "$results/bench_audit_G.json"
if [ "$gpus" -ge 2 ]; then
  counts=$(seq 1 "$gpus" | awk '$1 == 1 || $1 % 2 == 0' | tr '\n' ' ')
  # shellcheck disable=SC2086  # the counts are separate arguments
  step 900 "workload G data-parallel on $counts GPU(s)" \
    "$python" benchmarks/bench_distributed.py --workload G --nproc $counts \
    --out "$results/bench_distributed_G.json"
fi
