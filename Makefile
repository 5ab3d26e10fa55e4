# thinkpipe — build, test, fuzz, bench, install.
#   make            build the library, the programs and the tests (CUDA too when nvcc is found)
#   make deps       install the Debian packages the build and tests need (root, idempotent)
#   make test       build and run every test; ends with "N passed, N failed, N skipped"
#   make test SAN=1 the same under AddressSanitizer + UndefinedBehaviorSanitizer
#   make fuzz       libFuzzer targets, FUZZ_SECONDS each (default 60)
#   make sim-check  every CUDA test on the CPU simulator (tests/sim; no GPU needed)
#   make bench      throughput benchmarks against peers (not tests)
#   make install    PREFIX=/usr/local

VERSION := 0.1.0
PREFIX  ?= /usr/local
SAN     ?= 0
FUZZ_SECONDS ?= 60

CC      ?= cc
CFLAGS_BASE := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -g -fopenmp \
               -DTP_VERSION='"$(VERSION)"' -Ilibcore -Ikernels
ifeq ($(SAN),1)
  BUILD  ?= build/san
  CFLAGS := $(CFLAGS_BASE) -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
  LDSAN  := -fsanitize=address,undefined
else
  BUILD  ?= build/release
  CFLAGS := $(CFLAGS_BASE) -O2
  LDSAN  :=
endif
LDLIBS  := -lonig -lutf8proc -ljq -larchive -lzstd -lz -lm -fopenmp

# CUDA: built when nvcc is found on PATH or in /usr/local/cuda.
NVCC ?= $(shell command -v nvcc 2>/dev/null || (test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc))
CUDA_ARCHS ?= 80 90
ifneq ($(NVCC),)
  CUDA_HOME   := $(patsubst %/bin/nvcc,%,$(realpath $(NVCC)))
  CUDA_SRCS   := $(wildcard kernels/cuda/*.cu)
  CUDA_OBJS   := $(CUDA_SRCS:%.cu=$(BUILD)/obj/%.o)
  NVCCFLAGS   := -O2 -std=c++17 -Ilibcore -Ikernels $(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
                 -Xcompiler -Wall,-Wextra,-Werror
  CFLAGS      += -DTP_HAVE_CUDA -I$(CUDA_HOME)/include
  # cuBLAS is linked dynamically (its static library is hundreds of MB); the rpath finds it
  # where the toolkit is, LD_LIBRARY_PATH elsewhere (tests/gpu-check.sh looks for it).
  LDLIBS      += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart_static -lrt -ldl -lpthread -lstdc++
endif

# MPI (data parallelism across processes): built in when OpenMPI's pkg-config file is
# there; only the programs that use it link it.
MPI_CFLAGS := $(shell pkg-config --cflags ompi-c 2>/dev/null)
MPI_LIBS   := $(shell pkg-config --libs ompi-c 2>/dev/null)
ifneq ($(MPI_LIBS),)
  CFLAGS += -DTP_HAVE_MPI
endif

LIB_SRCS  := $(wildcard libcore/*.c) $(wildcard kernels/cpu/*.c)
LIB_OBJS  := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o) $(CUDA_OBJS)
LIB       := $(BUILD)/libthinkpipe.a
TOOLS     := $(patsubst tools/%.c,$(BUILD)/bin/%,$(wildcard tools/*.c))
TEST_SRCS := $(wildcard tests/unit/test_*.c)
TESTS     := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(TEST_SRCS))
BENCHES   := $(patsubst tests/bench/%.c,$(BUILD)/bench/%,$(wildcard tests/bench/*.c))
# Test servers (tests/server/): stand-ins for remote APIs, for the tests and the offline demo.
SERVERS   := $(patsubst tests/server/%.c,$(BUILD)/tests/%,$(wildcard tests/server/*.c))

.PHONY: all deps test fuzz bench install clean gpu-check sim-check FORCE
all: $(LIB) $(TOOLS) $(TESTS) $(BENCHES) $(SERVERS)

deps:
	@sh tests/deps.sh

$(BUILD)/obj/%.o: %.c $(wildcard libcore/*.h kernels/*.h kernels/*/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# The GPU architectures the objects were built for: rewritten only when CUDA_ARCHS changes,
# so a build for other cards recompiles the kernels (a bundle built after a one-arch build
# once lacked sm_80 code).
$(BUILD)/cuda-archs: FORCE
	@mkdir -p $(dir $@)
	@echo "$(CUDA_ARCHS)" | cmp -s - $@ || echo "$(CUDA_ARCHS)" > $@

$(BUILD)/obj/%.o: %.cu $(wildcard kernels/*.h kernels/cuda/*.h) $(BUILD)/cuda-archs
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/bin/%: tools/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< -o $@ $(LIB) $(LDLIBS) $(LDSAN)

$(BUILD)/bin/sft-train: tools/sft-train.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< -o $@ $(LIB) $(LDLIBS) $(MPI_LIBS) $(LDSAN)

# serve: HTTP from libmicrohttpd (Debian's).
$(BUILD)/bin/serve: tools/serve.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< -o $@ $(LIB) $(LDLIBS) -lmicrohttpd -lpthread $(LDSAN)

# cot-fetch: HTTP from libcurl, SHA-256 for its cache from OpenSSL (Debian's).
$(BUILD)/bin/cot-fetch: tools/cot-fetch.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< -o $@ $(LIB) $(LDLIBS) -lcurl -lcrypto $(LDSAN)

$(BUILD)/obj/libcore/dist.o: libcore/dist.c libcore/dist.h libcore/error.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(MPI_CFLAGS) -c $< -o $@

$(BUILD)/tests/%: tests/unit/%.c tests/unit/test.h $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/unit $< -o $@ $(LIB) $(LDLIBS) $(LDSAN)

$(BUILD)/tests/%: tests/server/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< -o $@ $(LIB) $(LDLIBS) -lmicrohttpd -lpthread $(LDSAN)

$(BUILD)/bench/%: tests/bench/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< -o $@ $(LIB) $(LDLIBS) $(LDSAN)

test: all
	@BUILD=$(BUILD) SAN=$(SAN) NVCC="$(NVCC)" CUDA_ARCHS="$(CUDA_ARCHS)" sh tests/run.sh

# Fuzzing: clang + libFuzzer, the library rebuilt with coverage instrumentation.
FUZZ_BUILD := build/fuzz
FUZZ_CFLAGS := $(CFLAGS_BASE) -Wno-pass-failed -O1 -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_LIB_OBJS := $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(wildcard libcore/*.c) $(wildcard kernels/cpu/*.c))
FUZZERS := $(patsubst tests/fuzz/%.c,$(FUZZ_BUILD)/%,$(wildcard tests/fuzz/fuzz_*.c))

$(FUZZ_BUILD)/obj/%.o: %.c $(wildcard libcore/*.h kernels/*.h kernels/cpu/*.h)
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -c $< -o $@

$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_LIB_OBJS)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer $^ -o $@ -lonig -lutf8proc -ljq -larchive -lzstd -lz -lm -lcurl -fopenmp

.SECONDARY: $(FUZZ_LIB_OBJS)
fuzz: $(FUZZERS)
	@FUZZ_BUILD=$(FUZZ_BUILD) FUZZ_SECONDS=$(FUZZ_SECONDS) sh tests/fuzz/run.sh

bench: $(LIB) $(TOOLS) $(BENCHES)
	@BUILD=$(BUILD) sh tests/bench/run.sh

gpu-check:
	@sh tests/gpu-check.sh

# Every CUDA test on the simulator (tests/sim: kernels/cuda compiled for the CPU), unit and
# CLI; needs the CUDA headers, not a GPU. About 25 minutes on 2 cores.
sim-check: all
	@BUILD=$(BUILD) SAN=$(SAN) NVCC="$(NVCC)" CUDA_ARCHS="$(CUDA_ARCHS)" SIM_ONLY=1 \
	  SIM_TESTS="test_sim_self test_cuda_ops test_cuda_decode test_cuda_attention test_cuda_sample \
	    test_cuda_generate test_cuda_model" \
	  SIM_CLI_TESTS="test_sft_train_cuda test_rollout_cuda" sh tests/run.sh

install: $(LIB) $(TOOLS)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include/thinkpipe \
	           $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/man/man5 $(DESTDIR)$(PREFIX)/share/man/man7
	install -m 755 $(TOOLS) $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(LIB) $(DESTDIR)$(PREFIX)/lib/
	install -m 644 libcore/*.h kernels/ops.h $(DESTDIR)$(PREFIX)/include/thinkpipe/
	install -m 644 man/man1/*.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	install -m 644 man/man5/*.5 $(DESTDIR)$(PREFIX)/share/man/man5/
	install -m 644 man/man7/*.7 $(DESTDIR)$(PREFIX)/share/man/man7/

clean:
	rm -rf build

FORCE:
