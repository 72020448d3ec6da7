#!/usr/bin/env bash
# The scaling run on a many-core machine (the device machine lent to some sessions), all at once:
#   bash bench/many_cores.sh OUT_DIR
# Every kernel at 1, 2, 4, 8 and 16 processes, then the engine's per-chunk cost and round trip.
set -u
out=${1:?an output folder}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python3 -c "import os, platform, numpy; print(os.cpu_count(), 'CPUs; Python', platform.python_version(), '; numpy', numpy.__version__)"
timeout 330 python3 -m padata_mp bench --mem 128G --threads 1,2,4,8,16 --repeat 3 \
    --json "$out/bench-16cpu.json" > "$out/bench-16cpu.txt" 2>&1
echo "bench exit $?"
cat "$out/bench-16cpu.txt"
timeout 90 python3 bench/engine_overhead.py --chunks 20000 --repeat 3 > "$out/overhead-16cpu.txt" 2>&1
echo "overhead exit $?"
cat "$out/overhead-16cpu.txt"
