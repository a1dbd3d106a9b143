#!/usr/bin/env bash
# Train on a lent GPU machine (Keras on JAX; it has no TensorFlow), in the calls the device tool allows:
# 10 minutes a call, at most 8 files of 16 MiB back from $OUT, and (now) 15 minutes of device time a session, start
# included. README, "Training on a lent GPU", says how to carry the data and the wheels (runs/device/) and what to
# do with what comes back.
#
#   training/gpu_recipe.sh all SECONDS RECIPE... [-- STUDENT_OPTIONS...]
#                                                      everything in one call of SECONDS: a 2-epoch probe of the
#                                                      teachers measures an epoch here, then the teachers (at once),
#                                                      their ensemble and the student, with epochs sized so that
#                                                      each cosine schedule runs to its end inside SECONDS; $OUT
#                                                      comes back as the student's run folder plus teachers.npz
#   training/gpu_recipe.sh teachers EPOCHS RECIPE...   train one teacher per RECIPE at once, then write
#                                                      $OUT/teachers.npz (their ensemble's probabilities)
#   training/gpu_recipe.sh student EPOCHS OPTIONS...   distil runs/device/teachers.npz into one student; $OUT
#                                                      comes back as its run folder (best.keras, config.json,
#                                                      state.json, log.csv, teachers.npz) to export here
#
# A RECIPE is one quoted string of `fer-train train` options, e.g. "--seed 11 --widths 48,96,192,384".
# FER_BUDGET_S=N stops the training after N seconds (each run keeps its best epoch so far), so that the ensemble or
# the copy back still happens inside the call's 10 minutes; `all` sets it per stage itself. FER_TEACHER_SHARE
# (default 0.55): the part of `all`'s time after the probe that goes to the teachers.
# Each run's log.csv and config.json come back in $OUT/runs.tar.gz; the commands it ran in $OUT/commands.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: training/gpu_recipe.sh all SECONDS RECIPE... [-- STUDENT_OPTIONS...] | teachers|student EPOCHS ..."
stage=${1:?$usage}
epochs=${2:?$usage}
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

# Wait for the training processes given, stopping them after $1 seconds (0: never); sets `failed` to how many
# failed (not a $(...) substitution: a subshell cannot wait for this shell's children).
wait_within() {
    local limit=$1 watchdog="" pid
    shift
    failed=0
    if [ "$limit" -gt 0 ]; then
        (sleep "$limit"; echo "budget of $limit s spent: stopping the training" >&2; kill "$@" 2>/dev/null) &
        watchdog=$!
    fi
    for pid in "$@"; do wait "$pid" || failed=$((failed + 1)); done
    [ -z "$watchdog" ] || kill "$watchdog" 2>/dev/null || true
}

# run_teachers EPOCHS LIMIT_S NAME RECIPE...: one run per recipe at once in $work/NAME1, NAME2 ...; sets `runs`.
run_teachers() {
    local count=$1 limit=$2 name=$3 index=0 recipe run
    local -a pids=() options command
    shift 3
    runs=()
    for recipe in "$@"; do
        index=$((index + 1))
        run=$work/$name$index
        read -r -a options <<<"$recipe"
        command=("$python" -m training train --data "$data" --out "$run" --epochs "$count" "${options[@]}")
        [ -f "$run/state.json" ] && command+=(--resume)
        echo "${command[*]}" | tee -a "$out/commands.txt"
        "${command[@]}" >"$work/$name$index.log" 2>&1 &
        pids+=($!); runs+=("$run")
    done
    wait_within "$limit" "${pids[@]}"
    tail -n 3 "$work/$name"*.log
}

# ensemble OUTPUT.npz: the teachers in `runs` that have a best epoch, averaged
ensemble() {
    local -a done_runs=()
    local run
    for run in "${runs[@]}"; do [ -f "$run/best.keras" ] && done_runs+=("$run"); done
    [ ${#done_runs[@]} -ge 1 ] || { echo "no teacher finished an epoch" >&2; exit 1; }
    rm -f "$1"
    "$python" -m training ensemble --teachers "${done_runs[@]}" --data "$data" -o "$1" | tee "$out/ensemble.txt"
}

# run_student EPOCHS LIMIT_S TEACHERS.npz OPTIONS...: distil into $work/student and copy its run folder to $OUT
run_student() {
    local count=$1 limit=$2 teachers=$3 run=$work/student
    local -a command
    shift 3
    command=("$python" -m training distill --data "$data" --out "$run" --epochs "$count" "$@")
    if [ -f "$run/state.json" ]; then command+=(--resume); else command+=(--teachers "$teachers"); fi
    echo "${command[*]}" | tee -a "$out/commands.txt"
    "${command[@]}" >"$work/student.log" 2>&1 &
    wait_within "$limit" $!
    grep -v "^Epoch " "$work/student.log" | tail -n 20
    [ "$failed" -eq 0 ] || echo "the student run failed or was stopped; its best epoch so far comes back" >&2
    [ -f "$run/best.keras" ] || exit 1
    cp "$run"/{best.keras,config.json,state.json,log.csv,teachers.npz} "$out/"
}

# probe_seconds RUN...: the slowest steady epoch (the 2nd) of the probe runs, in whole seconds (at least 1)
probe_seconds() {
    "$python" - "$@" <<'PY'
import csv, math, sys
rows = [list(csv.DictReader(open(f"{run}/log.csv"))) for run in sys.argv[1:]]
print(max(1, math.ceil(max(float(r[-1]["seconds"]) for r in rows if r))))
PY
}

case $stage in
all)
    [ "$epochs" -gt 0 ] 2>/dev/null || { echo "$usage" >&2; exit 2; }
    total=$epochs started=$SECONDS
    recipes=(); student=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do recipes+=("$1"); shift; done
    [ $# -gt 0 ] && shift && student=("$@")
    [ ${#recipes[@]} -ge 1 ] || { echo "give at least one RECIPE" >&2; exit 2; }
    # The probe: every teacher at once for 2 epochs, as they will run; epoch 1 pays the compilation.
    rm -rf "$work"/probe*
    run_teachers 2 $((total / 3)) probe "${recipes[@]}"
    [ "$failed" -eq 0 ] || { echo "the probe failed: see $work/probe*.log" >&2; exit 1; }
    epoch_s=$(probe_seconds "${runs[@]}")
    fixed=$((SECONDS - started - 2 * epoch_s))  # start-up, data, compilation: paid again by every stage
    [ "$fixed" -ge 0 ] || fixed=0
    left=$((total - (SECONDS - started) - 30))  # 30 s for the ensemble and the copy back
    share=${FER_TEACHER_SHARE:-0.55}
    teacher_s=$("$python" -c "print(int($left * $share))")
    teacher_epochs=$(((teacher_s - fixed) / epoch_s))
    student_epochs=$(((left - teacher_s - fixed) / epoch_s))
    echo "probe: ${epoch_s} s an epoch with ${#recipes[@]} run(s) at once, ${fixed} s fixed per stage; teachers" \
         "$teacher_epochs epochs, student $student_epochs epochs" | tee -a "$out/commands.txt"
    if [ "$teacher_epochs" -lt 5 ] || [ "$student_epochs" -lt 5 ]; then
        echo "$total s is too short for 5 epochs a stage at $epoch_s s an epoch" >&2; exit 1
    fi
    rm -rf "$work"/teacher* "$work/student"
    run_teachers "$teacher_epochs" "$teacher_s" teacher "${recipes[@]}"
    [ "$failed" -eq 0 ] || echo "$failed teacher run(s) failed or were stopped; the ensemble uses their best.keras" >&2
    ensemble "$out/teachers.npz"
    left=$((total - (SECONDS - started) - 10))
    run_student "$student_epochs" "$left" "$out/teachers.npz" "${student[@]}"
    ;;
teachers)
    [ $# -ge 1 ] || { echo "give at least one RECIPE" >&2; exit 2; }
    run_teachers "$epochs" "$budget" teacher "$@"
    [ "$failed" -eq 0 ] || echo "$failed teacher run(s) failed or were stopped; the ensemble uses their best.keras" >&2
    ensemble "$out/teachers.npz"
    ;;
student)
    run_student "$epochs" "$budget" "${FER_TEACHERS:-runs/device/teachers.npz}" "$@"
    ;;
*)
    echo "unknown stage $stage: all, teachers or student" >&2; exit 2 ;;
esac
(cd "$work" && tar czf "$out/runs.tar.gz" --exclude='*.keras' --exclude='*.npz' --exclude='*.png' .)
ls -la "$out"
