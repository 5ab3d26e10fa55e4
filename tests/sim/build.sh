#!/bin/sh
# Builds the CUDA tests against the simulator (tests/sim/sim.h): kernels/cuda/*.cu compiled
# by g++ for the CPU, with each kernel launch rewritten into a simulator call, linked with
# the library's C objects (built with CUDA support) and stand-ins for the CUDA runtime and
# cuBLAS — no GPU, driver or nvcc needed at run time. Output: $SIM/tests/test_cuda_* .
#   sh tests/sim/build.sh            (after make: uses $BUILD's objects, default build/release)
set -eu
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build/release}
SIM=${SIM:-build/sim}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
CXX=${CXX:-g++}
# (-fno-strict-aliasing: CUDA code reads bf16 pairs through unsigned ints; -ffp-contract=off:
# the __f*_rn helpers must stay unfused, as sample.cu's bit-exact sums need; the warnings
# silenced are ones nvcc never gives device code: unused template helpers, #pragma unroll.)
CXXFLAGS="-std=c++17 -O${SIM_O:-2} -g -fno-strict-aliasing -ffp-contract=off -DTP_CUDA_SIM -include tests/sim/prelude.h \
 -Itests/sim/include -Itests/sim -Ilibcore -Ikernels -I$CUDA_HOME/include -Wall -Wextra -Werror \
 -Wno-unused-parameter -Wno-unused-function -Wno-unknown-pragmas -Wno-unused-variable -Wno-sign-compare"
mkdir -p "$SIM/src" "$SIM/obj" "$SIM/tests"
# The CUDA source $1 as C++ for the simulator, into $2:
rewrite() {
    # kernel<<<grid, block, smem, stream>>>(args)  ->  ::sim::launcher(kernel, grid, block, smem, stream)(args)
    # extern __shared__ T name[];                  ->  T *name = (T *)::sim::dynamic_smem();
    # __shared__ T name[dims];                      ->  static T name[dims]; (registered: sim::shared_static)
    perl -0777 -pe 's/([A-Za-z_]\w*(?:<[^<>;()]*>)?)\s*<<<(.*?)>>>\s*\(/::sim::launcher($1, $2)(/gs;
        s/extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w ]*?\w)\s+(\w+)\[\];
         /$1 *$2 = ($1 *)::sim::dynamic_smem();/gx;
        s/^(\s*)__shared__\s+((?:__align__\(\d+\)\s+)?)(\w+)\s+(\w+)((?:\[[^\];]*\])*)\s*;
         /$1static $2$3 $4$5; static const bool $4_registered_ = ::sim::shared_static(&$4, sizeof $4);/gmx' \
        "$1" >"$2"
    if grep -n '^[^/]*__shared__' "$2"; then  # a declaration the rewrite did not take
        echo "sim: $1: a __shared__ declaration build.sh cannot rewrite" >&2
        exit 1
    fi
}
objs=""
for cu in kernels/cuda/*.cu; do
    name=$(basename "$cu" .cu)
    src=$SIM/src/$name.cpp obj=$SIM/obj/$name.o
    rewrite "$cu" "$src.new"
    cmp -s "$src.new" "$src" && rm "$src.new" || mv "$src.new" "$src"
    if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ tests/sim/prelude.h -nt "$obj" ] ||
        [ tests/sim/sim.h -nt "$obj" ] || [ tests/sim/build.sh -nt "$obj" ] ||
        [ -n "$(find kernels/cuda kernels/ops.h tests/sim/include -name '*.h' -newer "$obj")" ]; then
        echo "sim: $cu"
        $CXX $CXXFLAGS -c "$src" -o "$obj"
    fi
    objs="$objs $obj"
done
for f in runtime cublas; do
    if [ ! -f "$SIM/obj/sim_$f.o" ] || [ "tests/sim/$f.cpp" -nt "$SIM/obj/sim_$f.o" ] ||
        [ tests/sim/sim.h -nt "$SIM/obj/sim_$f.o" ]; then
        $CXX -std=c++17 -O2 -g -Itests/sim -Ikernels -I"$CUDA_HOME/include" -Wall -Wextra -Werror \
            -c "tests/sim/$f.cpp" -o "$SIM/obj/sim_$f.o"
    fi
    objs="$objs $SIM/obj/sim_$f.o"
done
# The library's C objects (libcore and the cpu kernels, compiled with TP_HAVE_CUDA by make).
cobjs=$(ls "$BUILD"/obj/libcore/*.o "$BUILD"/obj/kernels/cpu/*.o)
rm -f "$SIM/libsim.a" && ar rcs "$SIM/libsim.a" $cobjs $objs
CFLAGS="-std=c11 -D_GNU_SOURCE -O1 -g -fopenmp -DTP_VERSION=\"sim\" -DTP_HAVE_CUDA -Ilibcore -Ikernels -Itests/unit \
 -I$CUDA_HOME/include"
# The simulator's own checks (tests/sim/selftest.cu, rewritten like the kernels).
selftest=$SIM/src/selftest.cpp
rewrite tests/sim/selftest.cu "$selftest"
$CXX $CXXFLAGS -rdynamic "$selftest" -o "$SIM/tests/test_sim_self" "$SIM/libsim.a" -lonig -lutf8proc -ljq -larchive \
    -lzstd -lz -lm -fopenmp -ldl -lpthread
for t in tests/unit/test_cuda_*.c; do
    name=$(basename "$t" .c)
    cc $CFLAGS -rdynamic "$t" -o "$SIM/tests/$name" "$SIM/libsim.a" -lonig -lutf8proc -ljq -larchive -lzstd -lz -lm \
        -fopenmp -ldl -lpthread -lstdc++
done
# The programs the CUDA CLI tests run (tests/cli/test_*_cuda.sh with BIN=$SIM/bin).
mpi_cflags=$(pkg-config --cflags ompi-c 2>/dev/null || true)
mpi_libs=$(pkg-config --libs ompi-c 2>/dev/null || true)
[ -n "$mpi_libs" ] && CFLAGS="$CFLAGS -DTP_HAVE_MPI $mpi_cflags"
mkdir -p "$SIM/bin" "$SIM/lib"
cc -std=c11 -O2 -Wall -Wextra -Werror -shared -fPIC tests/sim/nccl.c -o "$SIM/lib/libnccl.so.2"
for tool in tokenize sft-train rollout; do
    cc $CFLAGS "tools/$tool.c" -o "$SIM/bin/$tool" "$SIM/libsim.a" -lonig -lutf8proc -ljq -larchive -lzstd -lz -lm \
        -fopenmp -ldl -lpthread -lstdc++ $mpi_libs -Wl,-rpath,'$ORIGIN/../lib'
done
echo "sim: $SIM/tests/ $SIM/bin/"
