#include <stdlib.h>
#include <string.h>

#include "chat.h"

void tp_chat_normalize(tp_chat *chat, const tp_tokenizer *t) {
    tp_buf out = {0};
    tp_err err;
    for (int i = 0; i < chat->count; i++) {
        out.len = 0;
        char *s = chat->messages[i].content;
        if (!tp_tokenizer_normalize(t, s, strlen(s), &out, &err)) break;
        tp_buf_putc(&out, 0);
        free(s);
        chat->messages[i].content = tp_xstrdup(out.data);
    }
    tp_buf_free(&out);
}

int tp_chat_encode(const tp_tokenizer *t, tp_tok_state *st, const tp_chat_render *r, tp_mask_mode mode, tp_ids *ids,
                   tp_buf *mask, tp_err *err) {
    size_t first = ids->count;
    if (tp_tokenizer_encode(t, st, r->text.data, r->text.len, false, ids, err) < 0) return -1;
    int last_turn = r->n_spans > 0 ? r->spans[r->n_spans - 1].turn : -1;
    size_t off = 0;
    int span = 0;
    tp_buf_reserve(mask, ids->count - first);
    for (size_t i = first; i < ids->count; i++) {
        const char *bytes;
        size_t len = tp_tokenizer_token_bytes(t, ids->ids[i], &bytes);
        while (span < r->n_spans && r->spans[span].end <= off) span++;
        bool in_span = span < r->n_spans && r->spans[span].start <= off;
        bool train = mode == TP_MASK_ALL || (in_span && (mode == TP_MASK_ASSISTANT || r->spans[span].turn == last_turn));
        if (off + len > r->text.len || memcmp(r->text.data + off, bytes, len) != 0) {
            tp_err_set(err, "token %zu does not line up with the rendered text at byte %zu; cannot place the loss mask",
                       i - first, off);
            return -1;
        }
        mask->data[mask->len++] = train ? 1 : 0;
        off += len;
    }
    if (off != r->text.len) {
        tp_err_set(err, "tokens cover %zu of %zu bytes of the rendered text; cannot place the loss mask", off,
                   r->text.len);
        return -1;
    }
    return 0;
}
