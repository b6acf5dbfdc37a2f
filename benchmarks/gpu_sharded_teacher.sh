#!/usr/bin/env bash
# Peak GPU memory per rank of a KD step with the teacher whole vs sharded under FSDP2, FSDP1 and DeepSpeed
# ZeRO-3, and the full CheckpointKDTrainer path under an FSDP2 and a ZeRO-3 student. About 5 minutes on one
# H100 (most of it process start-up); needs `pip install -e '.[deepspeed]'` for the ZeRO-3 rows (skipped
# without deepspeed).
#
# Status: NOT YET RUN. No GPU machine was available when it was written; the CPU tests
# (tests/training/test_teacher_sharding.py) cover the sharding itself on two gloo processes.
#
# With 2 or more GPUs each case runs on 2 ranks, and a sharded teacher holds half of its weights per GPU.
# With one GPU it runs on 1 rank: NCCL refuses two ranks on one device, so per-rank sharding cannot be
# shown there, and the sharded rows use CPU offload instead (the teacher's shards live in host memory and
# one layer at a time comes to the GPU), which is what a single-GPU FSDP or ZeRO-3 run can do.
#
#   bash benchmarks/gpu_sharded_teacher.sh [OUT_DIR]     # default benchmarks/results/gpu_sharded_teacher
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-benchmarks/results/gpu_sharded_teacher}}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"
GPUS=$(nvidia-smi -L 2>/dev/null | wc -l)
if [ "$GPUS" -lt 1 ]; then echo "no GPU: nothing to measure" >&2; exit 1; fi
if [ "$GPUS" -ge 2 ]; then NPROC=2; SHARDED=""; else NPROC=1; SHARDED="--offload"; fi
HAS_DS=$($PYTHON -c "import importlib.util; print(int(importlib.util.find_spec('deepspeed') is not None))")
export OMP_NUM_THREADS=4 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
run() {  # one torchrun launch, bounded so that a hang cannot eat the whole budget
  timeout 150 $PYTHON -m torch.distributed.run --standalone --nproc_per_node "$NPROC" \
    benchmarks/sharded_teacher_memory.py "$OUT" "$@" >"$OUT/log-$(echo "$@" | tr ' ' '_').txt" 2>&1 \
    || echo "FAILED: $* (see $OUT/log-*)" | tee -a "$OUT/failures.txt"
}
run step whole
run step fsdp2 $SHARDED
run step fsdp1 $SHARDED
[ "$HAS_DS" = 1 ] && run step zero3 $SHARDED || echo "deepspeed not installed: ZeRO-3 rows skipped" | tee -a "$OUT/failures.txt"
$PYTHON benchmarks/sharded_teacher_memory.py "$OUT" teacher
run trainer fsdp2 $SHARDED
[ "$HAS_DS" = 1 ] && run trainer zero3 $SHARDED
rm -rf "$OUT/teacher" "$OUT"/trainer-*/ "$OUT/unused"
$PYTHON - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = [json.loads(p.read_text()) | {"file": p.name} for p in sorted(out.glob("*-rank*.json"))]
for r in rows:
    print(r["file"], {k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items() if k != "file"})
whole = [r["step_peak_MiB"] for r in rows if r.get("case") == "whole"]
for r in rows:
    if whole and "step_peak_MiB" in r and r["case"] != "whole":
        print(f"{r['file']}: step peak {r['step_peak_MiB'] / max(whole):.2f} x the whole teacher's")
PY
