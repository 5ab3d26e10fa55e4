#!/bin/sh
# Where a batch-1 decode step's device time goes, kernel by kernel: Nsight Compute times
# every kernel of one decode step (the 0.5B shape, op by op: TP_CUDA_GRAPHS=0, caches not
# flushed) with the DRAM bytes it read, and the summary sums them by kernel. Compare the
# sum with the graph step's time from gpu-check: the difference is launch gaps and host
# round trips. Run after tests/gpu-check.sh (it unpacks .gpu/). Writes $OUT/gpu-profile.txt.
#   SKIP=kernels before the step (default 2500), COUNT=kernels of it (default 440)
#   DETAIL="regex ..." adds Nsight Compute's speed-of-light, occupancy and warp-stall
#   sections for one launch of each kernel whose name matches.
set -u
cd "$(dirname "$0")/.."
OUTDIR=${OUT:-build}
mkdir -p "$OUTDIR"
out=$OUTDIR/gpu-profile.txt
B=${B:-$PWD/.gpu}  # the binaries: the carried bundle, or gpu-check's own build
cublas=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(list(nvidia.cublas.__path__)[0], "lib"))' 2>/dev/null)
export LD_LIBRARY_PATH="${cublas:-}:${LD_LIBRARY_PATH:-}:$B/lib"
ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -n 1)
[ -n "$ncu" ] || { echo "no ncu on this machine" | tee "$out"; exit 0; }
TP_CUDA_GRAPHS=0 timeout 240 "$ncu" --csv --page raw --print-units base --cache-control none \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,launch__grid_size \
    --launch-skip "${SKIP:-2500}" --launch-count "${COUNT:-440}" \
    "$B/bench/engine_bench" tests/bench/configs/qwen2.5-0.5b.json 1 1 128 24 --device cuda --greedy \
    >"$OUTDIR/ncu.csv" 2>"$OUTDIR/ncu.err"
echo "ncu rc=$? ($(wc -l <"$OUTDIR/ncu.csv") lines)" >"$out"
tail -n 3 "$OUTDIR/ncu.err" >>"$out"
python3 - "$OUTDIR/ncu.csv" >>"$out" 2>&1 <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if r]
head = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
cols = rows[head]
name, t, b, g = (cols.index(c) for c in ("Kernel Name", "gpu__time_duration.sum", "dram__bytes_read.sum",
                                           "launch__grid_size"))
agg = collections.OrderedDict()
total_t = total_b = 0.0
for r in rows[head + 2:]:
    try:
        us, by = float(r[t].replace(",", "")) / 1e3, float(r[b].replace(",", ""))
    except (ValueError, IndexError):
        continue
    k = r[name].split("(")[0][:60] + " grid " + r[g]
    a = agg.setdefault(k, [0, 0.0, 0.0])
    a[0] += 1; a[1] += us; a[2] += by
    total_t += us; total_b += by
print(f"{'kernel (grid)':<75} {'calls':>5} {'us':>9} {'us/call':>8} {'GB/s':>7}")
for k, (n, us, by) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
    print(f"{k:<75} {n:>5} {us:>9.1f} {us / n:>8.2f} {by / us / 1e3 if us else 0:>7.0f}")
print(f"sum of kernel times {total_t:.1f} us, DRAM read {total_b / 1e6:.1f} MB")
PY
for k in ${DETAIL:-}; do
    TP_CUDA_GRAPHS=0 timeout 120 "$ncu" --cache-control none --launch-skip 100 --launch-count 1 \
        -k "regex:$k" --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        --section MemoryWorkloadAnalysis \
        "$B/bench/engine_bench" tests/bench/configs/qwen2.5-0.5b.json 1 1 128 24 --device cuda --greedy 2>&1 |
        grep -vE '^==PROF==|^engine_bench|^thinkpipe engine' >>"$out"
done
cat "$out"
