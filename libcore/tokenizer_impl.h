// tokenizer_impl.h — the tokenizer's tables, shared by tokenizer_load.c (which
// builds them) and tokenizer.c (which encodes and decodes with them). Not installed.
#ifndef TP_TOKENIZER_IMPL_H
#define TP_TOKENIZER_IMPL_H

#include "pretok.h"
#include "tokenizer.h"
#include "unicode.h"

enum {
    TOK_PRESENT = 1,  // the id has a token
    TOK_PURE = 2,     // a vocabulary token made only of byte-level characters
    TOK_ADDED = 4,
    TOK_SPECIAL = 8,
};

typedef struct {
    uint32_t off, len;  // decoded bytes in tp_tokenizer.bytes
} tok_bytes;

typedef struct {
    uint64_t key;  // (left id << 32) | right id; MERGE_EMPTY when free
    int32_t rank, new_id;
} merge_slot;
#define MERGE_EMPTY UINT64_MAX

typedef struct {
    int32_t id;  // -1 when free
    uint32_t hash;
} vocab_slot;

typedef struct {
    int32_t id;
    char *content;
    size_t len;
    bool special, normalized, lstrip, rstrip, single_word;
} added_token;

// Byte trie over added-token contents for leftmost-longest matching.
typedef struct {
    int32_t child, sibling;  // -1 terminated
    int32_t token;           // index into added[] ending here, or -1
    uint8_t byte;
} trie_node;

typedef struct {
    trie_node *nodes;
    int32_t count, cap;
    int32_t root[256];  // child of the root for each first byte, or -1
} trie;

struct tp_tokenizer {
    char *path;
    char hash[17];
    int32_t vocab_size;
    tp_buf bytes;  // decoded bytes of every token
    tok_bytes *tok;  // [vocab_size]
    uint8_t *flags;  // [vocab_size]
    vocab_slot *vhash;
    uint32_t vmask;
    merge_slot *mhash;
    uint64_t mmask;
    int32_t byte_id[256];  // id of each single byte, -1 when the vocabulary lacks it
    bool ignore_merges, fuse_unk;
    int32_t unk_id;
    added_token *added;
    int32_t n_added;
    trie raw_trie, norm_trie;  // added tokens matched before / after normalisation
    tp_norm_form norms[8];
    int n_norms;
    tp_pretok *pretok;
    int32_t *prefix, *suffix;  // add_special affixes
    size_t n_prefix, n_suffix;
    char *post_error;  // why add_special cannot be honoured, or NULL
    jv config;
};

int tp_tok_char_byte(uint32_t cp);  // the byte a byte-level character stands for, or -1
uint32_t tp_tok_byte_char(unsigned char b);  // the byte-level character of a byte
uint64_t tp_tok_hash_bytes(const void *p, size_t n);
int32_t tp_tok_vocab_lookup(const tp_tokenizer *t, const char *s, size_t n);  // pure tokens by bytes

#endif
