// reply.h — an OpenAI-compatible chat completion, streamed or whole, gathered into the
// parts a reasoning trace keeps: reasoning, content, finish_reason and usage.
//
// Reasoning arrives as "reasoning_content" (DeepSeek, vLLM's reasoning parsers),
// "reasoning" (OpenRouter, some vLLM versions) or inline as "<think>...</think>" at the start
// of the content (a server without a reasoning parser; or "...</think>" alone when the chat
// template already opened the block): tp_reply_end moves inline reasoning out of the content.
#ifndef TP_REPLY_H
#define TP_REPLY_H

#include <stdbool.h>
#include <stddef.h>

#include "buf.h"
#include "error.h"
#include "json.h"

typedef struct tp_reply {
    tp_buf reasoning, content;
    char finish[32];  // finish_reason, "" until one came
    jv usage;         // the last usage object seen, or null
    bool done;        // a stream's "[DONE]"
    bool inline_think;  // tp_reply_end found the reasoning inside the content
} tp_reply;

void tp_reply_init(tp_reply *r);
void tp_reply_free(tp_reply *r);
// One streamed event's data: a chat.completion.chunk, or "[DONE]". -1 with a message for
// data that is not such a chunk (broken JSON, an error object).
int tp_reply_chunk(tp_reply *r, const char *data, size_t len, tp_err *err);
// A whole (non-streamed) chat.completion body.
int tp_reply_whole(tp_reply *r, const char *body, size_t len, tp_err *err);
// After the last chunk: moves inline <think> reasoning out of the content (and the blank
// lines after it), when the reasoning did not come as a field.
void tp_reply_end(tp_reply *r);

#endif
