#!/usr/bin/env bash
# How the GPU figures under results/ were produced on a lent machine (one H100, 16 cores, no
# network, PyTorch preinstalled), in three calls of at most 10 minutes each:
#
#   benchmarks/gpu_session.sh start SECONDS   install the wheels in .whl, snapshot the repository
#                                             to /tmp/repo, start the reference plan in its own
#                                             session (it outlives the call), watch it
#   benchmarks/gpu_session.sh watch SECONDS   watch the plan until it ends or SECONDS pass;
#                                             pack /tmp/ref into $OUT/ref.tgz
#   benchmarks/gpu_session.sh quiet           stop what is left of the plan, then the timings
#                                             that need a quiet GPU (speed table, ContrastVAE
#                                             against the official code); pack them
#
# Needs: .whl (recbole and its small dependencies), .data (the datasets), .official/ContrastVAE.
set -u
mode=${1:?start, watch or quiet}
limit=${2:-560}
t0=$(date +%s)
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

install() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 3
}

status() {
    local done failed
    done=$(grep -l '"status": "ok"' /tmp/ref/runs/*/*/seed-*.json 2>/dev/null | wc -l)
    failed=$(grep -l '"status": "failed"' /tmp/ref/runs/*/*/seed-*.json 2>/dev/null | wc -l)
    echo "[$(($(date +%s) - t0)) s] runs ok $done failed $failed running" \
        "$(pgrep -fc 'bench run' || true); gpu $(nvidia-smi --query-gpu=utilization.gpu,memory.used \
        --format=csv,noheader); load $(cut -d' ' -f1 /proc/loadavg); mem used" \
        "$(free -g | awk '/Mem/ {print $3}') GiB"
}

pack() {
    tar czf "$OUT/ref.tgz" -C /tmp --exclude=ref/cache ref 2>/dev/null
    tail -n 40 /tmp/ref/plan.log > "$OUT/plan_tail.log" 2>/dev/null
}

case $mode in
start)
    install
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    rm -rf /tmp/repo /tmp/ref && mkdir -p /tmp/ref
    cp -a . /tmp/repo && cd /tmp/repo || exit 3
    PYTHONPATH=/tmp/site python3 -c "import torch, numpy, pandas, scipy, recbole; print('torch', torch.__version__,
'numpy', numpy.__version__, 'pandas', pandas.__version__, 'scipy', scipy.__version__)"
    PYTHONPATH=/tmp/site:/tmp/repo setsid nohup python3 -m bench plan \
        "${PLAN:-configs/plans/gpu-reference.yaml}" --parallel "${PARALLEL:-30}" \
        --deadline-s "${DEADLINE:-1100}" --reserve-s "${RESERVE:-200}" --threads 1 \
        --device "${DEVICE:-cuda}" --data-dir /tmp/repo/.data --out /tmp/ref \
        >/tmp/ref/plan.log 2>&1 </dev/null &
    while (($(date +%s) - t0 < limit - 30)); do sleep 30; status; done
    pack
    ;;
watch)
    while (($(date +%s) - t0 < limit - 20)) && pgrep -f 'bench plan' >/dev/null; do
        sleep 20; status
    done
    status
    pack
    ;;
quiet)
    pkill -f 'bench plan'; pkill -f 'bench run'; sleep 2
    install
    export PYTHONPATH=/tmp/site:.
    mkdir -p "$OUT/perf"
    python3 benchmarks/contrastvae_side_by_side.py --dataset amazon-beauty --data-dir .data \
        --official-dir .official/ContrastVAE --device cuda --epochs "${SIDE_EPOCHS:-5}" \
        --side-time-limit "${SIDE_LIMIT:-120}" --out "$OUT/perf" 2>&1 | grep -E '^(ours|official|---)'
    python3 benchmarks/model_speed.py --dataset amazon-beauty --data-dir .data --device cuda \
        --models "${SEQ_MODELS:-SASRec,GRU4Rec,SLIME4Rec,ContrastVAE,HybridContrastVAE}" \
        --stock SASRec --max-steps 50 --time-limit-per-model 40 --out "$OUT/perf" 2>&1 \
        | grep '^\['
    python3 benchmarks/model_speed.py --dataset ml-1m-strong --data-dir .data --device cuda \
        --models "${VAE_MODELS:-MultVAE,HVampGated,Vamp}" --max-steps 0 \
        --time-limit-per-model 35 --out "$OUT/perf" 2>&1 | grep '^\['
    ;;
esac
