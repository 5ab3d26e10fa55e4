// bpe_train.h — learning a byte-level BPE tokenizer from text, written as a
// tokenizer.json that HF tokenizers (and tp_tokenizer_load) reads.
//
// The algorithm is HF's BpeTrainer: words are counted after Qwen's pre-tokenizer;
// the vocabulary starts with the special tokens, then the 256 byte-level characters
// in code-point order; then the most frequent pair is merged, ties going to the
// smallest (left id, right id), until the vocabulary has vocab_size tokens or no
// pair occurs min_frequency times. With the same inputs it learns the same merges
// as HF (tests compare with a tokenizer HF trained).
#ifndef TP_BPE_TRAIN_H
#define TP_BPE_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "error.h"

typedef struct tp_bpe_trainer tp_bpe_trainer;

tp_bpe_trainer *tp_bpe_trainer_new(tp_err *err);
// Counts the pre-tokenized words of text[0..n) (valid UTF-8).
int tp_bpe_trainer_feed(tp_bpe_trainer *tr, const char *text, size_t n, tp_err *err);
// Learns the merges and appends tokenizer.json to out.
int tp_bpe_trainer_finish(tp_bpe_trainer *tr, int32_t vocab_size, uint64_t min_frequency, const char *const *special,
                          int n_special, tp_buf *out, tp_err *err);
uint64_t tp_bpe_trainer_words(const tp_bpe_trainer *tr);  // distinct words counted
void tp_bpe_trainer_free(tp_bpe_trainer *tr);

#endif
