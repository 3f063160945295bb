#!/usr/bin/env bash
# The five steps of yolov5-prune chained end to end, their matched controls, then a report.
#
#   bash scripts/run_pipeline.sh                 # built-in dataset, default settings
#   QUICK=1 bash scripts/run_pipeline.sh         # same chain and controls in a few minutes (smoke test)
#   DATA=data/coco_hand.yaml CFG=models/yolov5s.yaml IMG=640 EPOCHS=50 bash scripts/run_pipeline.sh
#
# Every step prints the command line it runs, so any of them can be copied and rerun by hand.
# Settings (environment variables): DATA CFG WEIGHTS IMG BATCH NBS OPTIMIZER EPOCHS SP_EPOCHS
# FT_EPOCHS SCALE SR_PENALTY (l1, hoyer or polarization; default l1) SR_POLAR_T STRATEGY (1, 2, 3
# or 8x) PERCENT LAYER_KEEP TARGET_FLOPS LAYERS NAME DEVICE WORKERS
# PYTHON QUICK HYP (step 1) FT_HYP (step 4) SP_HYP SP_OPTIMIZER (step 2 and its control; default
# FT_HYP, OPTIMIZER) LATENCY_AWARE (default 0: the original ranking, the most accurate per CPU latency in the frontier
# benchmark; 1: prune with --latency-aware and regularise what it prunes) INT8 (1: quantize the final model to INT8 with
# quantize.py and add its row to the report; CALIB calibration images, default 300). TARGET_FLOPS (the fraction of the FLOPs to
# keep) takes precedence over PERCENT;
# set TARGET_FLOPS= (empty) to prune by PERCENT. LAYERS=N (default 0: off) makes step 3 remove the
# N least important residual blocks first (--layers N); TARGET_FLOPS then refers to that model.
# FT_COS_LR (default 1: the finetuning steps, and control_final which finetunes like them, use the cosine
# learning-rate schedule, --cos-lr, which finetuned the pruned model to a higher test mAP than the linear one;
# 0: the linear schedule of every other step). scratch_small trains with the linear schedule of step 1;
# SCRATCH_COS_LR (default 1) also trains it with the cosine schedule (scratch_small_cos), and the report
# compares the final model with the more accurate of the two (0: the linear one only).
# CONTROLS (default 1; 0 skips them) trains the matched controls the report compares with, each with
# the same data, image size and total epochs as the model it is compared with:
#   control_sparse  the sparsity step's exact command without -sr (the control of the sparse model);
#   control_final   control_sparse finetuned like the pruned model, unpruned (EPOCHS+SP_EPOCHS+FT_EPOCHS);
#   scratch_small   CFG width-scaled to the pruned model's FLOPs at IMG (scripts/scaled_cfg.py), trained
#                   from scratch with HYP for EPOCHS+SP_EPOCHS+FT_EPOCHS (needs an upstream .yaml CFG);
#   scratch_small_cos  the same with the cosine schedule (SCRATCH_COS_LR=1).
# The report measures every accuracy on the dataset's held-out test split (val when it has none).
#
# The defaults are chosen for a 2-core CPU: yolov5n at 160 px, AdamW (it converges from scratch
# several times faster than SGD on this data), gradient accumulation to 16 images (--nbs 16: more
# optimizer steps on a small dataset), sparsity strength 0.03; sparsity training and finetuning
# continue from trained weights with data/hyps/hyp.finetune.yaml (half the learning rate, no raised
# bias learning rate at the start of warm-up).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
QUICK=${QUICK:-0}
NAME=${NAME:-$([ "$QUICK" = 1 ] && echo quick || echo default)}
DATA=${DATA:-data/builtin.yaml}
CFG=${CFG:-models/yolov5n.yaml}
WEIGHTS=${WEIGHTS:-}
DEVICE=${DEVICE:-}
STRATEGY=${STRATEGY:-8x}
LAYER_KEEP=${LAYER_KEEP:-0.01}
SCALE=${SCALE:-0.03}
SR_PENALTY=${SR_PENALTY:-l1}
SR_POLAR_T=${SR_POLAR_T:-1.0}
HYP=${HYP:-data/hyps/hyp.scratch-low.yaml}
FT_HYP=${FT_HYP:-data/hyps/hyp.finetune.yaml}
BATCH=${BATCH:-16}
NBS=${NBS:-16}
OPTIMIZER=${OPTIMIZER:-AdamW}
SP_OPTIMIZER=${SP_OPTIMIZER:-$OPTIMIZER}
SP_HYP=${SP_HYP:-$FT_HYP}
LATENCY_AWARE=${LATENCY_AWARE:-0}
case "$LATENCY_AWARE" in
  0|1) ;;
  *) echo "LATENCY_AWARE=$LATENCY_AWARE: use 1 (prune with --latency-aware) or 0 (the original ranking)" >&2; exit 2 ;;
esac
PERCENT=${PERCENT:-0.5}
TARGET_FLOPS=${TARGET_FLOPS-0.45}
LAYERS=${LAYERS:-0}
CONTROLS=${CONTROLS:-1}
FT_COS_LR=${FT_COS_LR:-1}
case "$FT_COS_LR" in
  0|1) ;;
  *) echo "FT_COS_LR=$FT_COS_LR: use 1 (finetune with --cos-lr) or 0 (the linear schedule)" >&2; exit 2 ;;
esac
SCRATCH_COS_LR=${SCRATCH_COS_LR:-1}
case "$SCRATCH_COS_LR" in
  0|1) ;;
  *) echo "SCRATCH_COS_LR=$SCRATCH_COS_LR: use 1 (also train scratch_small with --cos-lr) or 0 (linear only)" >&2
     exit 2 ;;
esac
case "$LAYERS" in
  ''|*[!0-9]*) echo "LAYERS=$LAYERS: give the number of residual blocks to remove (0: none)" >&2; exit 2 ;;
esac
case "$CONTROLS" in
  0|1) ;;
  *) echo "CONTROLS=$CONTROLS: use 1 (train the matched controls) or 0 (skip them)" >&2; exit 2 ;;
esac
if [ "$QUICK" = 1 ]; then
  IMG=${IMG:-128}; EPOCHS=${EPOCHS:-2}; SP_EPOCHS=${SP_EPOCHS:-1}; FT_EPOCHS=${FT_EPOCHS:-1}
  NTRAIN=${NTRAIN:-64}
else
  IMG=${IMG:-160}; EPOCHS=${EPOCHS:-30}; SP_EPOCHS=${SP_EPOCHS:-15}; FT_EPOCHS=${FT_EPOCHS:-10}
  NTRAIN=${NTRAIN:-}
fi

OUT=runs/pipeline/$NAME
mkdir -p "$OUT"
COMMON=(--img "$IMG" --batch "$BATCH" --nbs "$NBS" --optimizer "$OPTIMIZER" --data "$DATA"
        --project "$OUT" --exist-ok)
[ -n "$DEVICE" ] && COMMON+=(--device "$DEVICE")
[ -n "${WORKERS:-}" ] && COMMON+=(--workers "$WORKERS")
[ -n "$NTRAIN" ] && COMMON+=(--max-train-images "$NTRAIN")
T_START=$(date +%s)

step() {  # step NAME command...: print, run, time, stop on failure
  local name=$1; shift
  echo
  echo "==> [$name] $*"
  local t0=$(date +%s)
  "$@"
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  echo "$name $dt" >> "$OUT/timings.txt"
  if [ $rc -ne 0 ]; then
    echo "pipeline stopped: step '$name' failed (exit $rc)" >&2
    exit $rc
  fi
}
: > "$OUT/timings.txt"

# 1. baseline training
if [ -n "$WEIGHTS" ]; then BASE_INIT=(--weights "$WEIGHTS"); else BASE_INIT=(--weights ''); fi
step train $PY train.py "${COMMON[@]}" --epochs "$EPOCHS" --hyp "$HYP" --cfg "$CFG" "${BASE_INIT[@]}" \
  --name base
BASE=$OUT/base/weights/best.pt

# 2. sparsity training (all prunable layers unless strategy 1)
PRUNE_SET=1; [ "$STRATEGY" = 1 ] && PRUNE_SET=0
SPARSE_ARGS=("${COMMON[@]}" --optimizer "$SP_OPTIMIZER" --epochs "$SP_EPOCHS" --hyp "$SP_HYP" --weights "$BASE"
             --scale "$SCALE" --prune "$PRUNE_SET" --sr-penalty "$SR_PENALTY")
[ "$SR_PENALTY" = polarization ] && SPARSE_ARGS+=(--sr-polar-t "$SR_POLAR_T")
# --latency-aware also prunes the convs before upsampling and the SPPF input: regularise them too
[ "$LATENCY_AWARE" = 1 ] && SPARSE_ARGS+=(--include-upsample --include-sppf)
step sparsity $PY train_sparsity.py "${SPARSE_ARGS[@]}" --name sparse -sr
SPARSE=$OUT/sparse/weights/last.pt

# 3. channel pruning
case "$STRATEGY" in
  1) PRUNE=(prune_yolov5s.py); FLAG=--percent ;;
  2) PRUNE=(shortcut_prune_yolov5s.py); FLAG=--percent ;;
  3) PRUNE=(slim_prune_yolov5s.py --layer_keep "$LAYER_KEEP"); FLAG=--global_percent ;;
  8x) PRUNE=(slim_prune_yolov5s_8x.py --layer_keep "$LAYER_KEEP"); FLAG=--global_percent ;;
  *) echo "STRATEGY=$STRATEGY: use 1, 2, 3 or 8x" >&2; exit 2 ;;
esac
if [ -n "$TARGET_FLOPS" ]; then PRUNE+=(--target-flops "$TARGET_FLOPS"); else PRUNE+=("$FLAG" "$PERCENT"); fi
[ "$LAYERS" -gt 0 ] && PRUNE+=(--layers "$LAYERS")
[ "$LATENCY_AWARE" = 1 ] && PRUNE+=(--latency-aware)
step prune $PY "${PRUNE[@]}" --data "$DATA" --weights "$SPARSE" --img_size "$IMG" --out-dir "$OUT/pruned"
PRUNED=$(ls -t "$OUT"/pruned/prune_*.pt | head -n 1)

# 4. finetune: plain, and distilled from the baseline (the strongest unpruned model of the run)
FT_ARGS=("${COMMON[@]}" --epochs "$FT_EPOCHS" --hyp "$FT_HYP")
[ "$FT_COS_LR" = 1 ] && FT_ARGS+=(--cos-lr)
step finetune $PY prune_finetune.py "${FT_ARGS[@]}" --weights "$PRUNED" --name finetune
step finetune_distill $PY prune_finetune.py "${FT_ARGS[@]}" --weights "$PRUNED" \
  --name finetune_distill --distill --t_weights "$BASE"
FINAL=$OUT/finetune/weights/best.pt  # plain finetuning: distillation did not beat it on the built-in data

# the split the report (and INT8) measure accuracy on: held-out test when DATA has one
SPLIT=$($PY -c "from utils.dataconfig import load_data_config as l; print('test' if l('$DATA').test else 'val')" \
  | tail -n 1)

# 5. detection with the final model
SOURCE=$($PY -c "from utils.dataconfig import load_data_config as l; v=l('$DATA').val[0]; print(v if v.is_dir() else v.parent)" | tail -n 1)
step detect $PY prune_detect.py --weights "$FINAL" --img "$IMG" --conf 0.5 --source "$SOURCE" --line-thickness 1 \
  --project "$OUT" --name detect --exist-ok

# 6. optional: INT8 post-training quantization of the final model (ONNX Runtime, QDQ)
INT8_ARGS=()
if [ "${INT8:-0}" = 1 ]; then
  CALIB=${CALIB:-$([ "$QUICK" = 1 ] && echo 16 || echo 300)}
  step int8 $PY quantize.py --weights "$FINAL" --data "$DATA" --img "$IMG" --calib "$CALIB" --task "$SPLIT" \
    --runtime onnxruntime --json "$OUT/int8.json"
  INT8_ARGS=(--int8 "$OUT/int8.json")
fi

# 7. matched controls (CONTROLS=1): same data, image size and total epochs, without the step under test
CONTROL_ARGS=()
if [ "$CONTROLS" = 1 ]; then
  step control_sparse $PY train_sparsity.py "${SPARSE_ARGS[@]}" --name control_sparse
  CONTROL_SPARSE=$OUT/control_sparse/weights/last.pt
  step control_final $PY prune_finetune.py "${FT_ARGS[@]}" --weights "$CONTROL_SPARSE" --name control_final
  CONTROL_ARGS=(--control-sparse "$CONTROL_SPARSE" --control-final "$OUT/control_final/weights/best.pt")
  case "$CFG" in
    *.yaml|*.yml)
      [ -n "$WEIGHTS" ] && echo "NOTE: the baseline started from WEIGHTS=$WEIGHTS; scratch_small starts from scratch"
      step scratch_cfg $PY scripts/scaled_cfg.py --cfg "$CFG" --match "$PRUNED" --img "$IMG" \
        --out "$OUT/scratch_small.yaml"
      SCRATCH_ARGS=("${COMMON[@]}" --epochs "$(( EPOCHS + SP_EPOCHS + FT_EPOCHS ))" --hyp "$HYP"
                    --cfg "$OUT/scratch_small.yaml" --weights '')
      step scratch_small $PY train.py "${SCRATCH_ARGS[@]}" --name scratch_small
      CONTROL_ARGS+=(--scratch-small "$OUT/scratch_small/weights/best.pt")
      if [ "$SCRATCH_COS_LR" = 1 ]; then
        step scratch_small_cos $PY train.py "${SCRATCH_ARGS[@]}" --cos-lr --name scratch_small_cos
        CONTROL_ARGS+=(--scratch-small-cos "$OUT/scratch_small_cos/weights/best.pt")
      fi ;;
    *) echo "scratch_small skipped: CFG=$CFG is not an upstream model .yaml (width scaling needs width_multiple)" ;;
  esac
fi

# report
echo "total $(( $(date +%s) - T_START ))" >> "$OUT/timings.txt"
step report $PY scripts/pipeline_report.py --run "$OUT" --data "$DATA" --img "$IMG" \
  --base "$BASE" --sparse "$SPARSE" --pruned "$PRUNED" --finetune "$OUT/finetune/weights/best.pt" \
  --distill "$OUT/finetune_distill/weights/best.pt" "${CONTROL_ARGS[@]}" --split "$SPLIT" --quick "$QUICK" \
  "${INT8_ARGS[@]}"
