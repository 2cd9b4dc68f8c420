#!/usr/bin/env bash
# Check the training stages on one CUDA GPU: base_checkpoint in one process (bf16) and under `accelerate launch`
# with DeepSpeed ZeRO-2 and ZeRO-3, then lora_adapter in one process and under DeepSpeed (ZeRO-2 through the
# `deepspeed` launcher, ZeRO-3 through `accelerate launch`), one GPU each. Prints per run: wall seconds, tokens/s,
# peak GPU memory (torch.cuda.max_memory_allocated of rank 0), precision and final training loss.
#
#   bash scripts/gpu_check.sh DATA_DIR OUTDIR [--config configs/default.yaml] [--dry-run] [--only NAME[,NAME]]
#
# DATA_DIR holds the outputs of the curation stages and the tokenizer, made on CPU with the same config, e.g.
#   for d in legal medicine software; do for s in raw_corpus cleaned_corpus deduped_shards; do
#     llm-pipeline stage $s --domain $d --data-dir /tmp/gpu-data; done; done
#   llm-pipeline stage tokenizer --data-dir /tmp/gpu-data
# Every run works in a copy of it under OUTDIR/runs/<name>/data (DATA_DIR is never written) and logs to
# OUTDIR/logs/<name>.log; OUTDIR/summary.tsv and summary.json hold the table. A failed run is recorded and the next
# one starts. --dry-run writes the configs and launcher files and prints the commands without running them (no GPU
# needed). PYTHON picks the interpreter (default: .venv/bin/python when present, else python3); RUN_TIMEOUT the
# seconds one run may take (default 1800).
set -u -o pipefail

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

REPO="$(cd "$(dirname "$0")/.." && pwd)"
CONFIG="configs/default.yaml"
DRY_RUN=0
ONLY=""
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --config) CONFIG="${2:?--config needs a path}"; shift ;;
    --only) ONLY="${2:?--only needs run names}"; shift ;;
    -h|--help) usage ;;
    *) ARGS+=("$1") ;;
  esac
  shift
done
[ ${#ARGS[@]} -eq 2 ] || usage
DATA_DIR="$(cd "${ARGS[0]}" 2>/dev/null && pwd)" || { echo "error: DATA_DIR ${ARGS[0]} not found" >&2; exit 2; }
mkdir -p "${ARGS[1]}" && OUTDIR="$(cd "${ARGS[1]}" && pwd)" || { echo "error: cannot create OUTDIR ${ARGS[1]}" >&2; exit 2; }
cd "$REPO"  # the config's relative paths and configs/deepspeed/ resolve from the repository root
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON="python3"; fi
fi
RUN_TIMEOUT="${RUN_TIMEOUT:-1800}"
mkdir -p "$OUTDIR/logs" "$OUTDIR/runs"
rm -f "$OUTDIR/runs/order"
# The peak-memory wrapper below runs from OUTDIR: the repository must be importable without being installed too.
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

for needed in "tokenizer/_manifest.json" "deduped_shards"; do
  [ -e "$DATA_DIR/$needed" ] || { echo "error: $DATA_DIR/$needed missing: run the curation stages and the tokenizer first" >&2; exit 2; }
done
if [ "$DRY_RUN" = 0 ] && ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "error: $PYTHON sees no CUDA device (use --dry-run to only print the commands)" >&2
  exit 2
fi

# ---------------------------------------------------------------- helpers
# A wrapper around `python -m llm_pipeline` that records the process's peak GPU memory when it exits, so the Trainer
# stages (which do not record it) are measured the same way as base_checkpoint.
PEAK="$OUTDIR/peak_memory.py"
cat > "$PEAK" <<'EOF'
import atexit, json, os, runpy, sys

def _record():
    try:
        import torch
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a report must not turn a finished run into a failed one
        peak = 0
    target = os.environ.get("GPU_CHECK_PEAK")
    if target:
        with open(f"{target}.rank{os.environ.get('RANK', '0')}.json", "w") as f:
            json.dump({"peak_bytes": peak}, f)

atexit.register(_record)
sys.argv = ["llm_pipeline", *sys.argv[1:]]
runpy.run_module("llm_pipeline", run_name="__main__", alter_sys=True)
EOF

selected() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

# make_run NAME PRECISION: a data dir holding copies of DATA_DIR's inputs and a config pointing at it.
make_run() {
  local name="$1" precision="$2" run="$OUTDIR/runs/$1"
  rm -rf "$run" && mkdir -p "$run/data"
  cp -r "$DATA_DIR/tokenizer" "$DATA_DIR/deduped_shards" "$run/data/"
  "$PYTHON" - "$CONFIG" "$run/config.yaml" "$run/data" "$precision" <<'EOF'
import sys, yaml
src, dst, data_dir, precision = sys.argv[1:]
cfg = yaml.safe_load(open(src))
cfg["data_dir"] = data_dir
cfg["allowed_roots"] = [*cfg.get("allowed_roots", []), data_dir]
for section in ("base_checkpoint", "lora_adapter"):
    cfg.setdefault(section, {})["precision"] = precision
cfg.setdefault("tracking", {})["wandb"] = False
yaml.safe_dump(cfg, open(dst, "w"), sort_keys=False)
EOF
}

# launch_files NAME ASSET PRESET [LAUNCHER]: the project's own launch plan (accelerate.yaml) for one GPU.
launch_files() {
  "$PYTHON" -m llm_pipeline launch "$2" --config "$OUTDIR/runs/$1/config.yaml" --num-processes 1 \
    --deepspeed "$3" --launcher "${4:-accelerate}" --out "$OUTDIR/runs/$1/launch" > "$OUTDIR/runs/$1/launch.txt"
}

# run_one NAME ASSET CMD...: run, time and record one stage; never stops the script.
run_one() {
  local name="$1" asset="$2"; shift 2
  local run="$OUTDIR/runs/$name" log="$OUTDIR/logs/$name.log"
  printf '%q ' "$@" > "$run/command.txt"; echo >> "$run/command.txt"
  echo "$name" >> "$OUTDIR/runs/order"
  echo "== $name: $(cat "$run/command.txt")"
  if [ "$DRY_RUN" = 1 ]; then echo "dry-run" > "$run/status"; return 0; fi
  local start end rc
  start=$(date +%s.%N)
  GPU_CHECK_PEAK="$run/peak" timeout "$RUN_TIMEOUT" "$@" > "$log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  echo "$start $end" > "$run/wall"
  echo "$asset" > "$run/asset"
  if [ $rc -eq 0 ]; then echo ok > "$run/status"; else echo "failed rc=$rc" > "$run/status"; fi
  echo "   $(cat "$run/status") in $(awk "BEGIN{printf \"%.1f\", $end-$start}") s (log: $log)"
}

STAGE=(-m llm_pipeline stage)
# ---------------------------------------------------------------- base_checkpoint
if selected bc_single_bf16; then
  make_run bc_single_bf16 bf16
  run_one bc_single_bf16 base_checkpoint "$PYTHON" "$PEAK" stage base_checkpoint --config "$OUTDIR/runs/bc_single_bf16/config.yaml"
fi
for zero in zero2 zero3; do
  name="bc_accelerate_$zero"
  selected "$name" || continue
  make_run "$name" bf16
  if launch_files "$name" base_checkpoint "$zero"; then
    run_one "$name" base_checkpoint "$PYTHON" -m accelerate.commands.launch --config_file "$OUTDIR/runs/$name/launch/accelerate.yaml" \
      "$PEAK" stage base_checkpoint --config "$OUTDIR/runs/$name/config.yaml"
  else
    echo "failed: llm-pipeline launch" > "$OUTDIR/runs/$name/status"
  fi
done

# ---------------------------------------------------------------- lora_adapter (on the bf16 base checkpoint above)
BASE="$OUTDIR/runs/bc_single_bf16/data/base_checkpoint"
[ -f "$BASE/_manifest.json" ] || BASE="$DATA_DIR/base_checkpoint"
lora_run() {  # lora_run NAME: a run folder with the base checkpoint copied in, or a recorded skip
  make_run "$1" bf16
  if [ -f "$BASE/_manifest.json" ] || [ "$DRY_RUN" = 1 ]; then
    [ -d "$BASE" ] && cp -r "$BASE" "$OUTDIR/runs/$1/data/"
    return 0
  fi
  echo "skipped: no base_checkpoint (bc_single_bf16 failed and DATA_DIR has none)" > "$OUTDIR/runs/$1/status"
  return 1
}
if selected lora_single_bf16 && lora_run lora_single_bf16; then
  run_one lora_single_bf16 lora_adapter "$PYTHON" "$PEAK" stage lora_adapter --config "$OUTDIR/runs/lora_single_bf16/config.yaml"
fi
if selected lora_deepspeed_zero2 && lora_run lora_deepspeed_zero2; then
  # The DeepSpeed launcher, as `llm-pipeline launch --launcher deepspeed` writes it (the Trainer reads these variables).
  run_one lora_deepspeed_zero2 lora_adapter env ACCELERATE_USE_DEEPSPEED=true \
    ACCELERATE_DEEPSPEED_CONFIG_FILE="$REPO/configs/deepspeed/zero2.json" \
    "$PYTHON" -m deepspeed.launcher.runner --num_gpus 1 --no_local_rank \
    "$PEAK" stage lora_adapter --config "$OUTDIR/runs/lora_deepspeed_zero2/config.yaml"
fi
if selected lora_accelerate_zero3 && lora_run lora_accelerate_zero3; then
  if launch_files lora_accelerate_zero3 lora_adapter zero3; then
    run_one lora_accelerate_zero3 lora_adapter "$PYTHON" -m accelerate.commands.launch \
      --config_file "$OUTDIR/runs/lora_accelerate_zero3/launch/accelerate.yaml" \
      "$PEAK" stage lora_adapter --config "$OUTDIR/runs/lora_accelerate_zero3/config.yaml"
  else
    echo "failed: llm-pipeline launch" > "$OUTDIR/runs/lora_accelerate_zero3/status"
  fi
fi

# ---------------------------------------------------------------- summary
"$PYTHON" - "$OUTDIR" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
rows = []
order = (out / "runs" / "order").read_text().split() if (out / "runs" / "order").exists() else []
for run in sorted((p for p in (out / "runs").iterdir() if p.is_dir()), key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name)):
    if not (run / "status").exists():
        continue
    row = {"run": run.name, "status": (run / "status").read_text().strip(), "wall_s": None, "tokens_per_s": None,
           "peak_gpu_mb": None, "precision": None, "final_loss": None, "log": str(out / "logs" / f"{run.name}.log")}
    if (run / "wall").exists():
        start, end = map(float, (run / "wall").read_text().split())
        row["wall_s"] = round(end - start, 1)
    peaks = [json.loads(p.read_text())["peak_bytes"] for p in run.glob("peak.rank*.json")]
    if peaks:
        row["peak_gpu_mb"] = round(max(peaks) / 2**20, 1)
    asset = (run / "asset").read_text().strip() if (run / "asset").exists() else None
    metrics = run / "data" / "metrics" / f"{asset}.json"
    if asset and metrics.exists():
        stats = json.loads(metrics.read_text())
        row["tokens_per_s"] = stats.get("tokens_per_second")
        row["precision"] = stats.get("precision")
        row["final_loss"] = stats.get("final_train_loss", stats.get("train_loss"))
        row["processes"] = stats.get("processes")
    rows.append(row)
cols = ["run", "status", "wall_s", "tokens_per_s", "peak_gpu_mb", "precision", "final_loss"]
lines = ["\t".join(cols)] + ["\t".join("" if r.get(c) is None else str(r[c]) for c in cols) for r in rows]
(out / "summary.tsv").write_text("\n".join(lines) + "\n")
(out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
widths = [max(len(l.split("\t")[i]) for l in lines) for i in range(len(cols))]
print()
for l in lines:
    print("  ".join(v.ljust(w) for v, w in zip(l.split("\t"), widths)))
print(f"\nlogs: {out / 'logs'}; table: {out / 'summary.tsv'}")
EOF
failed=$(grep -L '^ok$\|^dry-run$' "$OUTDIR"/runs/*/status 2>/dev/null | wc -l)
[ "$failed" -eq 0 ] || echo "$failed run(s) did not finish: see their logs" >&2
exit $(( failed > 0 ))
