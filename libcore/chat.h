// chat.h — chat records and the chat templates tokenize renders them with.
//
// A record is either {"messages": [{"role", "content", "reasoning_content"?}, ...]}
// or a trace from cot-fetch {"problem", "reasoning", "content", "system"?}, which
// becomes a user turn (the problem through the prompt template) and an assistant
// turn "<think>\n{reasoning}\n</think>\n\n{content}".
//
// Rendering gives the text the model's own Jinja chat template gives (checked
// against jinja2 in tests/ref) and the byte spans the model is trained on: each
// assistant turn's text and its end-of-turn token.
#ifndef TP_CHAT_H
#define TP_CHAT_H

#include <jv.h>
#include <stdbool.h>
#include <stddef.h>

#include "buf.h"
#include "error.h"
#include "tokenizer.h"

// cot-fetch's default prompt (DeepSeek's advice for R1): {problem} is replaced.
#define TP_DEFAULT_PROMPT "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}."

typedef enum {
    TP_TEMPLATE_CHATML,       // Qwen2.5: <|im_start|>role\n...<|im_end|>\n, default system prompt
    TP_TEMPLATE_QWEN3,        // Qwen3: chatml with <think> blocks on turns after the last user query
    TP_TEMPLATE_DEEPSEEK_R1,  // DeepSeek-R1 / R1-Distill: <｜User｜> <｜Assistant｜>, BOS first
    TP_TEMPLATE_LLAMA3,       // <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>
    TP_TEMPLATE_NEMO,         // the NeMo notebook's <extra_id_0>System / <extra_id_1>User format
    TP_TEMPLATE_COUNT
} tp_template;

const char *tp_template_name(tp_template t);
int tp_template_parse(const char *name);  // -1 when unknown
// Picks the template from tokenizer_config.json's chat_template; -1 with err when
// there is none or it is not recognised.
int tp_template_auto(jv tokenizer_config, tp_err *err);

typedef struct {
    char *role, *content, *reasoning;  // reasoning may be NULL
} tp_chat_message;

typedef struct {
    tp_chat_message *messages;
    int count;
} tp_chat;

// Reads a record; prompt is the template for trace records ({problem} replaced),
// NULL for TP_DEFAULT_PROMPT. Errors name the field ("messages[2].content must be a string").
int tp_chat_from_record(jv record, const char *prompt, tp_chat *out, tp_err *err);
void tp_chat_free(tp_chat *c);
// A prompt to continue: {"messages": [...]} as they are, or {"problem"} as one user turn
// through the prompt template ({problem} replaced; NULL: TP_DEFAULT_PROMPT). system, when
// not NULL, is prepended unless the record has its own ("system" field or a first system
// message).
int tp_chat_from_problem(jv record, const char *prompt, const char *system, tp_chat *out, tp_err *err);

typedef struct {
    size_t start, end;  // bytes of the rendered text
    int turn;           // index of the assistant message
} tp_chat_span;

typedef struct {
    tp_buf text;
    tp_chat_span *spans;  // trained spans in order
    int n_spans, cap_spans;
} tp_chat_render;

// Renders chat with the template into r (cleared first). bos is the BOS token text
// for templates that start with it (deepseek-r1, llama3).
int tp_chat_render_text(tp_template t, const tp_chat *chat, const char *bos, tp_chat_render *r, tp_err *err);
// The same, then the template's generation prompt (add_generation_prompt=True): the text a
// model continues. chatml/qwen3 "<|im_start|>assistant\n", deepseek-r1 "<｜Assistant｜><think>\n"
// (the R1-Distill template of 2025), llama3's assistant header (which its rendering always
// ends with), nemo "<extra_id_1>Assistant\n".
int tp_chat_render_prompt(tp_template t, const tp_chat *chat, const char *bos, tp_chat_render *r, tp_err *err);
// A problem or messages record (tp_chat_from_problem) as the token ids a model continues:
// normalised, rendered with t and its generation prompt, tokenized in one piece. Appends to ids.
int tp_chat_prompt_ids(const tp_tokenizer *tok, tp_tok_state *st, tp_template t, jv record, const char *prompt,
                       const char *system, tp_ids *ids, tp_err *err);
// The token text that ends an assistant turn: "<|im_end|>", "<｜end▁of▁sentence｜>",
// "<|eot_id|>", or for nemo the next turn's "<extra_id_1>".
const char *tp_template_end_of_turn(tp_template t);
// The BOS text the deepseek-r1 and llama3 templates start with (tokenizer_config.json's
// bos_token, else the family's), "" for the others.
const char *tp_template_bos(tp_template t, const tp_tokenizer *tok);
// "auto" (from tokenizer_config.json's chat_template) or a template name; -1 with a
// message otherwise.
int tp_template_resolve(const char *name, const tp_tokenizer *tok, tp_err *err);
void tp_chat_render_free(tp_chat_render *r);

// Normalises every message's text with the tokenizer's normaliser (NFC for Qwen),
// so the rendered text is what the tokenizer sees and token offsets line up with it.
void tp_chat_normalize(tp_chat *chat, const tp_tokenizer *t);

typedef enum {
    TP_MASK_ASSISTANT,  // every assistant turn and its end-of-turn token
    TP_MASK_LAST,       // only the last assistant turn (--mask-history)
    TP_MASK_ALL,        // every token (--train-on-prompt)
} tp_mask_mode;

// Tokenizes a rendering in one piece (so ids equal HF's tokenization of the
// rendered text) and sets mask[i] = 1 for tokens whose first byte lies in a
// trained span. Appends to ids and mask (same count). Fails when token bytes do not
// line up with the text (a normaliser changed it), rather than guess a mask.
int tp_chat_encode(const tp_tokenizer *t, tp_tok_state *st, const tp_chat_render *r, tp_mask_mode mode, tp_ids *ids,
                   tp_buf *mask, tp_err *err);

#endif
