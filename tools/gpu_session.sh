#!/usr/bin/env bash
# A GPU session in one or two commands, on a machine whose Python already has a CUDA torch
# and which has no network (docs/gpu.md, "A GPU session in two commands"). Every phase runs
# under a time limit cut to end by the session's deadline; what the session produced lands in
# OUT_DIR as at most 8 files (logs and results packed as .tar.gz).
#
#   tools/gpu_session.sh pack              where there is a network, once: the wheels papermill needs
#                                          (.whl/, tools/gpu_wheels.sh) and Fashion-MNIST's four IDX .gz
#                                          files (data/fashion-mnist/); copy the checkout with both
#   tools/gpu_session.sh check [OUT_DIR]   make gpu-check, then the benchmarks (fused N, landscape, AGC,
#                                          torch.compile) -> summary.json, bench.jsonl, tables.md, session.tar.gz
#   tools/gpu_session.sh bench [OUT_DIR]   the benchmarks alone
#   tools/gpu_session.sh gpucheck [OUT_DIR]  make gpu-check alone (again, after fixes) -> summary.json, gpu_check.tar.gz
#   tools/gpu_session.sh fig1 [OUT_DIR]    Fig. 1's paper profile on Fashion-MNIST, fused, EPOCHS epochs
#                                          (unset: as many as a run of FIG1_SECONDS finishes, from a step-time
#                                          calibration; when not one epoch of all the series fits, the groups
#                                          one epoch of which does; none: no run) -> fig1.tar.gz, outcomes.csv, ...
#
# Settings (environment): OUT_DIR (default results/gpu_session), PYTHON (python3), DEVICE (cuda),
# DEADLINE_S (the whole command's seconds: check 390, bench 240, gpucheck 200, fig1 270), WHEELS (.whl),
# FASHION_DIR (data/fashion-mnist), FIG1_DATASET (fashion), EPOCHS, FIG1_SECONDS (210: the fig1 run's
# seconds at most, start and finish included), CALIBRATION (fig1: step times from this JSON-lines file
# instead of a calibration),
# RESULTS (results: the fig1 run's results root), GPU_CHECK (more gpu-check options), GIT_COMMIT (logged
# where the checkout has no .git),
# SMOKE=1 (a rehearsal on a CPU: DEVICE=cpu, tiny sizes, the same phases and files).
set -uo pipefail

WHAT=${1:-}
OUT_DIR=${2:-${OUT_DIR:-results/gpu_session}}
PYTHON=${PYTHON:-python3}
SMOKE=${SMOKE:-0}
DEVICE=${DEVICE:-$([ "$SMOKE" = 1 ] && echo cpu || echo cuda)}
WHEELS=${WHEELS:-.whl}
FASHION_DIR=${FASHION_DIR:-data/fashion-mnist}
FIG1_DATASET=${FIG1_DATASET:-fashion}
FIG1_SECONDS=${FIG1_SECONDS:-210}
RESULTS=${RESULTS:-results}
FASHION_FILES="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"
RESERVE_S=20 # kept back from the deadline for the tables and packing OUT_DIR
T0=$(date +%s)
PHASES=()

case "$WHAT" in
check) DEADLINE_S=${DEADLINE_S:-390} ;;
bench) DEADLINE_S=${DEADLINE_S:-240} ;;
gpucheck) DEADLINE_S=${DEADLINE_S:-200} ;;
fig1) DEADLINE_S=${DEADLINE_S:-270} ;;
pack) DEADLINE_S=${DEADLINE_S:-900} ;;
*)
    sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 2
    ;;
esac

say() { echo "[session $(($(date +%s) - T0))s] $*"; }
left() { echo $((DEADLINE_S - ($(date +%s) - T0) - RESERVE_S)); }

# phase NAME CAP_S LOG COMMAND...: COMMAND under min(CAP_S, what is left before the deadline),
# its output into LOG (- : this session's log; else the file, whose tail is shown); skipped
# when less than 10 s is left. Its status is kept for the closing summary.
phase() {
    local name=$1 cap=$2 log=$3 l start rc
    shift 3
    l=$(left)
    ((cap > l)) && cap=$l
    if ((cap < 10)); then
        say "$name: skipped, ${l}s left before the deadline"
        PHASES+=("$name: skipped (deadline)")
        return 0
    fi
    say "$name: up to ${cap}s: $*"
    start=$(date +%s)
    if [ "$log" = - ]; then
        timeout -k 10 "$cap" "$@"
    else
        timeout -k 10 "$cap" "$@" >"$log" 2>&1
    fi
    rc=$?
    [ "$log" = - ] || tail -n 4 "$log" | sed 's/^/    /'
    say "$name: exit $rc after $(($(date +%s) - start))s$([ $rc = 124 ] && echo ' (stopped at its limit)')"
    PHASES+=("$name: exit $rc, $(($(date +%s) - start))s of ${cap}s")
    return 0
}

# The wheels the image lacks (papermill and its kernel), into a folder on PYTHONPATH; nothing
# is installed into the system's Python and torch is never touched.
install() {
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    if $PYTHON -c "import papermill, ipykernel" 2>/dev/null; then
        say "papermill and ipykernel are there already"
        return 0
    fi
    if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        say "papermill is missing and $WHEELS/ holds no wheels: run 'tools/gpu_session.sh pack' where there is a network"
        return 1
    fi
    local site=${SITE_DIR:-/tmp/nfstudy-site}
    $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$WHEELS"/*.whl || return 1
    export PYTHONPATH="$PYTHONPATH:$site"
    $PYTHON -c "import papermill, ipykernel; print('[session] papermill', papermill.__version__, 'ipykernel', ipykernel.__version__)"
}

start_log() {
    mkdir -p "$OUT_DIR"
    OUT_DIR=$(cd "$OUT_DIR" && pwd)
    exec > >(tee -a "$OUT_DIR/session.log") 2>&1
    TEE_PID=$!
    # at exit, close the pipe and let tee write the log's last lines before the files are taken
    trap 'exec >&- 2>&-; wait "$TEE_PID" 2>/dev/null' EXIT
    say "$WHAT on $(uname -n), commit $(git rev-parse --short HEAD 2>/dev/null || echo "${GIT_COMMIT:-unknown: no .git here, set GIT_COMMIT}"), deadline ${DEADLINE_S}s, device $DEVICE, smoke $SMOKE, out $OUT_DIR"
    export NFSTUDY_PROGRESS=0 MPLBACKEND=Agg PYTHONUNBUFFERED=1 NFSTUDY_OFFLINE=1
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    install || say "the wheels did not install: the figures (papermill) will fail; the benchmarks need none of them"
}

finish() {
    say "done; phases:"
    printf '  %s\n' "${PHASES[@]}"
    ls -la "$OUT_DIR"
}

# --------------------------------------------------------------------------- benchmarks

BENCH_JSONL=""
benchmarks() {
    BENCH_JSONL="$OUT_DIR/bench.jsonl"
    local logs="$OUT_DIR/logs" train_args landscape_args clip_args compile_args
    mkdir -p "$logs"
    if [ "$SMOKE" = 1 ]; then
        train_args=(--grid smoke --rounds 1 --variants "eager fp32,bf16+channels_last,cuda graph")
        landscape_args=(--depth 8 --step-sizes 4 --rounds 1 --batch-size 16)
        clip_args=(--depth 8 --reps 3 --steps 2 --layers 2 --width 256)
        compile_args=(--grid smoke --rounds 1 --variants compile)
    else
        train_args=(--grid gpu)
        landscape_args=()
        clip_args=()
        compile_args=(--grid variants --variants compile)
    fi
    # The fused grid stops starting measurements 30 s before its limit (one may take that long).
    local cap=100 l
    l=$(left)
    ((cap > l)) && cap=$l
    phase bench-fused "$cap" "$logs/bench_train_fused.log" $PYTHON benchmarks/bench_train.py --fused --device "$DEVICE" \
        "${train_args[@]}" --budget-s $((cap > 40 ? cap - 30 : 10)) --jsonl "$BENCH_JSONL"
    phase bench-landscape 45 "$logs/bench_landscape.log" $PYTHON benchmarks/bench_landscape.py --device "$DEVICE" \
        --dataset synthetic "${landscape_args[@]}" --jsonl "$BENCH_JSONL"
    phase bench-clip 45 "$logs/bench_clip.log" $PYTHON benchmarks/bench_clip.py --device "$DEVICE" "${clip_args[@]}" \
        --jsonl "$BENCH_JSONL"
    # torch.compile last: the longest and least certain (its compile time is one of its numbers).
    phase bench-compile 90 "$logs/bench_train_compile.log" $PYTHON benchmarks/bench_train.py --fused --device "$DEVICE" \
        "${compile_args[@]}" --jsonl "$BENCH_JSONL"
}

tables() {
    local summary=${1:-}
    local files=("$BENCH_JSONL")
    [ -f results/gpu_check/logs/bench-train.jsonl ] && files+=(results/gpu_check/logs/bench-train.jsonl)
    [ -f "$BENCH_JSONL" ] || return 0
    $PYTHON tools/bench_tables.py "${files[@]}" ${summary:+--summary "$summary"} >"$OUT_DIR/tables.md" || say "tables failed"
    $PYTHON tools/bench_tables.py "${files[@]}" --fig1-epochs "$FIG1_SECONDS" >>"$OUT_DIR/tables.md" 2>&1 || true
    tail -3 "$OUT_DIR/tables.md"
}

# --------------------------------------------------------------------------- commands

cmd_pack() {
    set -e
    tools/gpu_wheels.sh "$WHEELS"
    mkdir -p "$FASHION_DIR"
    local missing=0 f
    for f in $FASHION_FILES; do [ -f "$FASHION_DIR/$f" ] || missing=1; done
    if [ $missing = 1 ]; then
        local tmp
        tmp=$(mktemp -d)
        if (cd "$tmp" && apt-get download dataset-fashion-mnist >/dev/null 2>&1); then # Debian's package: the four files
            dpkg-deb -x "$tmp"/dataset-fashion-mnist_*.deb "$tmp/x"
            cp "$tmp"/x/usr/share/datasets/fashion-mnist/*.gz "$FASHION_DIR/"
        else # the canonical files
            for f in $FASHION_FILES; do
                curl -fsSL -o "$FASHION_DIR/$f" "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/$f"
            done
        fi
        rm -rf "$tmp"
    fi
    ls -la "$WHEELS" "$FASHION_DIR"
    du -shc "$WHEELS" "$FASHION_DIR"
}

# make gpu-check under the deadline: 1.5x budgets on the GPU (its first run there: a timeout
# would cost another session), ending itself 10 s before its limit of at most CAP_S.
run_gpu_check() {
    local cap=$1 l scale=${SCALE:-1.5} gpu_args=(--out results/gpu_check)
    l=$(left)
    ((cap > l)) && cap=$l
    if [ "$SMOKE" = 1 ]; then # a CPU rehearsal: two figures side by side, the CUDA tests (skipped here)
        scale=10
        gpu_args+=(--device cpu --only environment,cuda-tests,figure:fig7,figure:fig2 --jobs 2)
    fi
    local total
    total=$(awk -v c="$cap" -v s="$scale" 'BEGIN { printf "%d", (c - 10) / s }')
    # shellcheck disable=SC2086  # GPU_CHECK: more options, word-split on purpose
    phase gpu-check "$cap" - $PYTHON -m nfstudy.gpu_check "${gpu_args[@]}" --budget-scale "$scale" --budget-s "$total" ${GPU_CHECK:-}
    cp results/gpu_check/summary.json "$OUT_DIR/summary.json" 2>/dev/null
}

cmd_check() {
    start_log
    run_gpu_check 180
    benchmarks
    tables results/gpu_check/summary.json
    pack_files "$OUT_DIR/session.tar.gz" results/gpu_check "$OUT_DIR/logs"
    rm -rf "$OUT_DIR/logs"
    finish
}

# gpu-check alone (a second run after fixes; GPU_CHECK="--only ..." to narrow it): 3 files.
cmd_gpucheck() {
    start_log
    run_gpu_check $((DEADLINE_S - 40))
    pack_files "$OUT_DIR/gpu_check.tar.gz" results/gpu_check
    finish
}

cmd_bench() {
    start_log
    benchmarks
    tables
    pack_files "$OUT_DIR/session.tar.gz" "$OUT_DIR/logs"
    rm -rf "$OUT_DIR/logs"
    finish
}

cmd_fig1() {
    start_log
    local data_args=(--dataset "$FIG1_DATASET")
    if [ "$FIG1_DATASET" = fashion ]; then
        local f
        for f in $FASHION_FILES; do
            [ -f "$FASHION_DIR/$f" ] || say "warning: $FASHION_DIR/$f is missing (tools/gpu_session.sh pack fetches it)"
        done
        [ -d "$FASHION_DIR" ] && export NFSTUDY_FASHION_MNIST=${NFSTUDY_FASHION_MNIST:-$(cd "$FASHION_DIR" && pwd)}
    fi
    local smoke_params=() series_params=()
    # a rehearsal: ResNet-8, two BN series (fused) and the no-BN one that diverges, one epoch
    [ "$SMOKE" = 1 ] && smoke_params=(-p depth 8) && series_params=(-p series "['bn@0.1','bn@0.003','none@0.1']")
    local series=""
    if [ -z "${EPOCHS:-}" ]; then # calibrate: fig1's three fused groups, 20 steps each
        mkdir -p "$OUT_DIR/calibration"
        local calibration="$OUT_DIR/calibration/fig1_step_times.jsonl" grid=fig1
        [ "$SMOKE" = 1 ] && grid=smoke
        if [ -n "${CALIBRATION:-}" ]; then # step times measured before (a session's calibration/fig1_step_times.jsonl)
            cp "$CALIBRATION" "$calibration" && say "fig1: step times from $CALIBRATION (no calibration)"
        else
            phase fig1-calibrate 90 "$OUT_DIR/calibration/bench_train.log" $PYTHON benchmarks/bench_train.py --fused --device "$DEVICE" \
                --grid $grid --rounds 1 --variants "" --jsonl "$calibration"
        fi
        # the run's seconds: what the deadline leaves (the run's own limit), at most FIG1_SECONDS;
        # bench_tables counts the kernel's start, the data, each group's warm-up and the finish in them
        local seconds plan
        seconds=$(left)
        ((seconds > FIG1_SECONDS)) && seconds=$FIG1_SECONDS
        if [ "$SMOKE" = 1 ] && [ -z "${CALIBRATION:-}" ]; then
            EPOCHS=1
        else
            plan=$($PYTHON tools/bench_tables.py "$calibration" --fig1-epochs "$seconds")
            EPOCHS=$(sed -n 's/^EPOCHS=//p' <<<"$plan")
            series=$(sed -n 's/^SERIES=//p' <<<"$plan")
        fi
        [ -n "$EPOCHS" ] || {
            say "no step times to size the run by: set EPOCHS"
            finish
            exit 1
        }
        if [ "$EPOCHS" = 0 ]; then # a run that cannot finish one epoch would be killed with nothing to show
            say "fig1: not one epoch of even one group fits in ${seconds}s (above): no run; raise DEADLINE_S / FIG1_SECONDS or set EPOCHS"
            PHASES+=("fig1: not started (not one epoch fits in ${seconds}s)")
            pack_files "$OUT_DIR/fig1.tar.gz" "$OUT_DIR/calibration"
            rm -rf "$OUT_DIR/calibration"
            finish
            return 0
        fi
    fi
    if [ -n "$series" ]; then
        say "fig1: $EPOCHS epochs of a subset, the groups one epoch of which fits: $series (not all series fit one epoch)"
        series_params=(-p series "$series")
    else
        say "fig1: $EPOCHS epochs"
    fi
    phase fig1 "$(left)" - $PYTHON -m nfstudy run fig1 --profile paper --seed 0 --device "$DEVICE" "${data_args[@]}" --results "$RESULTS" \
        -p fuse on -p epochs "$EPOCHS" -p extend_until_plateau False "${smoke_params[@]}" "${series_params[@]}"
    # Not the paper profile's own parameters (epochs, series, ...): the run's own configuration
    # folder, results/fig1/paper+<what differs>-<hash>/ (nfstudy/identity.py), the one just written.
    local config
    config=$(ls -td "$RESULTS"/fig1/paper*/ 2>/dev/null | head -n 1)
    config=${config%/}
    local seed="$config/seed=0"
    for f in outcomes.csv claims.csv run.json; do
        [ -f "$seed/$f" ] && cp "$seed/$f" "$OUT_DIR/$f"
    done
    [ -f "$config/claims.csv" ] && cp "$config/claims.csv" "$OUT_DIR/claims_over_seeds.csv"
    # the whole folder, a stopped run's attempt included (its per-series history.csv), without checkpoint weights
    pack_files "$OUT_DIR/fig1.tar.gz" "$config" "$OUT_DIR/calibration"
    rm -rf "$OUT_DIR/calibration"
    finish
}

# pack_files ARCHIVE PATH...: a .tar.gz of the paths that exist, each under its own name
# (results/gpu_check -> gpu_check/...), without checkpoint weights (*.pt); at most 15 MB.
pack_files() {
    local archive=$1 p
    shift
    local members=()
    for p in "$@"; do [ -e "$p" ] && members+=(-C "$(dirname "$p")" "$(basename "$p")"); done
    ((${#members[@]})) || return 0
    local skip=(--exclude='*.pt' --exclude='*.tmp') # checkpoints' weights; their history.csv stays (a run stopped mid-way)
    tar czf "$archive" "${skip[@]}" "${members[@]}" 2>/dev/null
    if [ "$(stat -c %s "$archive")" -gt $((15 * 1024 * 1024)) ]; then # a file that comes back is at most 16 MB
        say "$archive is over 15 MB: packed again without notebooks and files over 1 MB (listed in $archive.left-out)"
        for p in "$@"; do
            [ -e "$p" ] && (cd "$(dirname "$p")" && find "$(basename "$p")" -type f \( -name '*.ipynb' -o -size +1M \))
        done >"$archive.left-out"
        tar czf "$archive" "${skip[@]}" -X "$archive.left-out" "${members[@]}" 2>/dev/null
    fi
    say "packed $(du -h "$archive" | cut -f1) into $archive"
}

"cmd_$WHAT"
