// libFuzzer target: cot-filter's text scanners on arbitrary bytes (invalid UTF-8, stray
// tags, huge words): words, n-gram repetition, MinHash, script mixing and <think> blocks
// stay in bounds and their results stay in range.
#include "minhash.h"
#include "ngram.h"
#include "textfilter.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    const char *text = (const char *)data;
    tp_words w = {0};
    tp_words_scan(&w, text, size, 0);
    for (size_t i = 0; i < w.count; i++) {
        if (w.start[i] >= w.end[i] || w.end[i] > size || (i && w.start[i] < w.end[i - 1])) abort();
    }
    if (tp_is_blank(text, size) && w.count) abort();  // white space holds no word
    tp_u64map scratch = {0};
    for (int n = 1; n <= 3; n++) {
        double f = tp_repeat_fraction(w.hash, w.count, n, &scratch);
        if (!(f >= 0 && f <= 1)) abort();
    }
    uint64_t *sh = NULL, sig[TP_MINHASH_K], sig2[TP_MINHASH_K];
    size_t cap = 0;
    tp_minhash_words(&w, 2, &sh, &cap, sig);
    tp_minhash_words(&w, 2, &sh, &cap, sig2);
    if (tp_minhash_similarity(sig, sig2) != 1.0) abort();
    tp_script_mix m;
    tp_script_mix_of(text, size, &m);
    if (!(m.mix >= 0 && m.mix <= 1) || m.count[m.dominant] > m.letters) abort();
    tp_think t;
    tp_think_scan(text, size, &t);
    if (t.body_start > t.body_end || t.body_end > size || t.answer_start > size) abort();
    const char *why = tp_think_problem(text, size, &t);
    if (!why && (t.closes != 1 || t.body_end == t.body_start)) abort();
    free(sh);
    tp_u64map_free(&scratch);
    tp_words_free(&w);
    return 0;
}
