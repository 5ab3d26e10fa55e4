#!/bin/sh
# Multi-digit addition as chat records with a short worked solution, for the offline demo
# and sft-train's learning test:  sh samples/addition/make.sh N SEED > add.jsonl
# {"messages":[{"role":"user","content":"What is 385+47?"},
#              {"role":"assistant","content":"385+47: 5+7=12, carry 1 ... so 432"}]}
# Deterministic in SEED (awk's own generator).
n=${1:-1000} seed=${2:-1}
awk -v n="$n" -v seed="$seed" 'BEGIN {
    srand(seed)
    for (i = 0; i < n; i++) {
        a = int(rand() * 990) + 10; b = int(rand() * 990) + 10
        # Column by column, ones first, the way the answer is worked out by hand.
        x = a; y = b; carry = 0; steps = ""
        while (x > 0 || y > 0 || carry > 0) {
            d = x % 10 + y % 10 + carry
            steps = steps sprintf("%s%d+%d+%d=%d", steps == "" ? "" : ", ", x % 10, y % 10, carry, d)
            carry = int(d / 10); x = int(x / 10); y = int(y / 10)
        }
        printf "{\"messages\":[{\"role\":\"user\",\"content\":\"What is %d+%d?\"},", a, b
        printf "{\"role\":\"assistant\",\"content\":\"%s, so %d\"}]}\n", steps, a + b
    }
}'
