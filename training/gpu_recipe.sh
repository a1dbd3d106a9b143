#!/usr/bin/env bash
# Train on a lent GPU machine (Keras on JAX; it has no TensorFlow), in the calls the device tool allows:
# 10 minutes a call, at most 8 files of 16 MiB back from $OUT. README, "Training on a lent GPU", says how to carry
# the data and the wheels (runs/device/) and what to do with what comes back.
#
#   training/gpu_recipe.sh teachers EPOCHS RECIPE...   train one teacher per RECIPE at once, then write
#                                                      $OUT/teachers.npz (their ensemble's probabilities)
#   training/gpu_recipe.sh student EPOCHS OPTIONS...   distil runs/device/teachers.npz into one student; $OUT
#                                                      comes back as its run folder (best.keras, config.json,
#                                                      state.json, log.csv, teachers.npz) to export here
#
# A RECIPE is one quoted string of `fer-train train` options, e.g. "--seed 11 --widths 48,96,192,384".
# FER_BUDGET_S=N stops the training after N seconds (each run keeps its best epoch so far), so that the ensemble or
# the copy back still happens inside the call's 10 minutes.
# Each run's log.csv and config.json come back in $OUT/runs.tar.gz; the commands it ran in $OUT/commands.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:?usage: training/gpu_recipe.sh teachers|student EPOCHS ...}
epochs=${2:?usage: training/gpu_recipe.sh teachers|student EPOCHS ...}
shift 2
out=${OUT:?OUT: the folder whose files come back}
data=${FER_DATA:-runs/device/fer-train-public.npz}
work=${FER_WORK:-/tmp/fer-runs}
python=${PYTHON:-python3}
budget=${FER_BUDGET_S:-0}
if [ -d runs/device/wheels ] && ! "$python" -c "import keras" 2>/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        runs/device/wheels/*.whl
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONUNBUFFERED=1
# Several runs share the GPU: each allocates what it needs instead of 75 % of the memory up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
mkdir -p "$work"
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
  lscpu 2>/dev/null | grep -E "Model name|^CPU\(s\)" || true; } | tee "$out/commands.txt"

# Wait for the training processes given, stopping them when the budget runs out; sets `failed` to how many failed
# (not a $(...) substitution: a subshell cannot wait for this shell's children).
wait_within_budget() {
    local watchdog="" pid
    failed=0
    if [ "$budget" -gt 0 ]; then
        (sleep "$budget"; echo "budget of $budget s spent: stopping the training" >&2; kill "$@" 2>/dev/null) &
        watchdog=$!
    fi
    for pid in "$@"; do wait "$pid" || failed=$((failed + 1)); done
    [ -z "$watchdog" ] || kill "$watchdog" 2>/dev/null || true
}

case $stage in
teachers)
    [ $# -ge 1 ] || { echo "give at least one RECIPE" >&2; exit 2; }
    pids=(); runs=(); index=0
    for recipe in "$@"; do
        index=$((index + 1))
        run=$work/teacher$index
        read -r -a options <<<"$recipe"
        command=("$python" -m training train --data "$data" --out "$run" --epochs "$epochs" "${options[@]}")
        [ -f "$run/state.json" ] && command+=(--resume)
        echo "${command[*]}" | tee -a "$out/commands.txt"
        "${command[@]}" >"$work/teacher$index.log" 2>&1 &
        pids+=($!); runs+=("$run")
    done
    wait_within_budget "${pids[@]}"
    tail -n 3 "$work"/teacher*.log
    [ "$failed" -eq 0 ] || echo "$failed teacher run(s) failed or were stopped; the ensemble uses their best.keras" >&2
    done_runs=(); for run in "${runs[@]}"; do [ -f "$run/best.keras" ] && done_runs+=("$run"); done
    [ ${#done_runs[@]} -ge 1 ] || exit 1
    rm -f "$out/teachers.npz"
    "$python" -m training ensemble --teachers "${done_runs[@]}" --data "$data" -o "$out/teachers.npz" \
        | tee "$out/ensemble.txt"
    ;;
student)
    teachers=${FER_TEACHERS:-runs/device/teachers.npz}
    run=$work/student
    command=("$python" -m training distill --data "$data" --out "$run" --epochs "$epochs" "$@")
    if [ -f "$run/state.json" ]; then command+=(--resume); else command+=(--teachers "$teachers"); fi
    echo "${command[*]}" | tee -a "$out/commands.txt"
    "${command[@]}" >"$work/student.log" 2>&1 &
    wait_within_budget $!
    grep -v "^Epoch " "$work/student.log" | tail -n 20
    [ "$failed" -eq 0 ] || echo "the student run failed or was stopped; its best epoch so far comes back" >&2
    [ -f "$run/best.keras" ] || exit 1
    cp "$run"/{best.keras,config.json,state.json,log.csv,teachers.npz} "$out/"
    ;;
*)
    echo "unknown stage $stage: teachers or student" >&2; exit 2 ;;
esac
(cd "$work" && tar czf "$out/runs.tar.gz" --exclude='*.keras' --exclude='*.npz' --exclude='*.png' .)
ls -la "$out"
