#!/usr/bin/env bash
# The prepared GPU check (docs/scale.md): run it on a machine with a CUDA GPU, from the repository
# root, with the project's virtualenv at .venv. It
#   1. prints what torch sees (one JSON line),
#   2. runs the GPU tests (tests/test_devices.py: the tests marked for a GPU run instead of
#      skipping; plus the device tests that run everywhere),
#   3. measures attack throughput (reconstructions per second, DLG and GIA, LeNet and ResNet-18)
#      on the GPU and on the CPU: one JSON line from benchmarks/attack_throughput.py,
#   4. runs one attack cell through the CLI with --device cuda and --device cpu.
# Everything it prints goes to stdout and, one JSON line per step, to ${OUT:-.}/gpu_check.jsonl.
# Without a GPU, steps 2-4 run their CPU parts only (the GPU tests skip, throughput is CPU-only).
# About 3-4 minutes on one GPU machine (most of it the CPU side of the throughput benchmark);
# every step is bounded by `timeout`, so a hang cannot eat a lent machine's time (at most 13 min).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RESULTS=${OUT:-.}/gpu_check.jsonl
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
: > "$RESULTS"

"$PY" - <<'PYEOF' | tee -a "$RESULTS"
import json, torch
print(json.dumps({"step": "torch", "torch": torch.__version__, "cuda": torch.cuda.is_available(),
                  "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}))
PYEOF

start=$(date +%s)
timeout 300 "$PY" -m pytest -q -p no:cacheprovider tests/test_devices.py 2>&1 | tail -n 15
status=${PIPESTATUS[0]}
echo "{\"step\": \"gpu_tests\", \"exit\": $status, \"seconds\": $(( $(date +%s) - start ))}" | tee -a "$RESULTS"

timeout 360 "$PY" benchmarks/attack_throughput.py --devices cuda cpu --iterations 20 --cpu-iterations 2 --targets 2 \
  | tee -a "$RESULTS"

for device in cuda cpu; do
  start=$(date +%s)
  rm -rf "${OUT:-/tmp}/gpu_check_attack_$device"
  timeout 120 "$PY" -m gradguard attack --device "$device" --attack gia --images 4 --iterations 50 --restarts 1 \
    --defense graddefense --out "${OUT:-/tmp}/gpu_check_attack_$device" > "${OUT:-/tmp}/gpu_check_attack_$device.log" 2>&1
  status=$?
  "$PY" - "$device" "$status" "$(( $(date +%s) - start ))" "${OUT:-/tmp}/gpu_check_attack_$device" <<'PYEOF' | tee -a "$RESULTS"
import json, sys
from pathlib import Path
device, status, seconds, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
record = {"step": "attack_cli", "device": device, "exit": status, "seconds": seconds}
if status == 0:
    summary = json.loads((out / "scores.json").read_text())["summary"]
    record.update(psnr=round(summary["psnr_mean"], 3), ran_on=summary["device"])
else:  # the one-line error (e.g. --device cuda on a machine without a GPU)
    lines = Path(f"{out}.log").read_text(errors="replace").strip().splitlines()
    record["error"] = lines[-1][:300] if lines else ""
print(json.dumps(record))
PYEOF
done

# Everything above as one JSON line (stdout and ${OUT:-.}/gpu_check.json).
"$PY" - "$RESULTS" <<'PYEOF' | tee "${OUT:-.}/gpu_check.json"
import json, sys
steps = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
print(json.dumps({"gpu_check": steps}))
PYEOF
