// textfilter.h — judgments about one text that cot-filter (and later reward) makes:
// which scripts it is written in, and whether its <think> block is well formed.
#ifndef TP_TEXTFILTER_H
#define TP_TEXTFILTER_H

#include <stdbool.h>
#include <stddef.h>

// ---- language mixing ----

typedef enum tp_script {
    TP_SCRIPT_LATIN, TP_SCRIPT_GREEK, TP_SCRIPT_CYRILLIC, TP_SCRIPT_ARMENIAN, TP_SCRIPT_HEBREW,
    TP_SCRIPT_ARABIC, TP_SCRIPT_INDIC, TP_SCRIPT_THAI, TP_SCRIPT_HANGUL,
    TP_SCRIPT_CJK,    // Han ideographs and Japanese kana: one script, Chinese and Japanese share it
    TP_SCRIPT_OTHER,  // letters of every other script
    TP_SCRIPT_COUNT
} tp_script;

const char *tp_script_name(tp_script s);  // "latin", "cjk", ...
// The script of a letter (the caller checks that cp is a letter). The one table of
// script ranges: the word splitter (ngram.h) asks it too.
tp_script tp_script_of(unsigned cp);
// Whether a letter belongs to a script written without spaces between words (CJK,
// Thai, Lao, Myanmar, Khmer), where each character counts as a word of its own.
bool tp_script_unspaced(unsigned cp);

// Whether s[0..n) is only spaces, tabs and line breaks (a NUL byte is not blank).
bool tp_is_blank(const char *s, size_t n);

typedef struct tp_script_mix {
    size_t letters;                       // the letters counted
    size_t count[TP_SCRIPT_COUNT];
    tp_script dominant, second;           // the two most frequent (second == dominant when one)
    double mix;                           // 1 - count[dominant] / letters (0 when no letters)
} tp_script_mix;

// Counts the letters of text[0..len) by script, the way R1's language-consistency
// check means it: digits, punctuation, symbols and spaces belong to no language;
// LaTeX commands (a backslash and the letters after it) are markup, not English; and
// a lone Latin or Greek letter (a variable such as x or π) is mathematics. So
// "因此 x = \frac{1}{2}" is all CJK, "Let me compute 因此" is mixed.
void tp_script_mix_of(const char *text, size_t len, tp_script_mix *out);
// Adds the counts of another text (reasoning + content are judged together).
void tp_script_mix_add(const char *text, size_t len, tp_script_mix *acc);
void tp_script_mix_finish(tp_script_mix *acc);

// ---- <think> blocks ----

// Where reasoning and answer are in a text that may carry inline <think>...</think>.
typedef struct tp_think {
    int opens, closes;        // "<think>" and "</think>" tags found
    bool implicit_open;       // a "</think>" with no "<think>" before it: the template opened the
                              // block in the prompt (DeepSeek-R1's does), the text starts inside it
    size_t open_at;           // offset of the first "<think>"
    size_t body_start, body_end;  // the first block's reasoning (body_end == len when unterminated)
    size_t answer_start;      // where the answer part starts: after the last "</think>";
                              // len when a block is left open; 0 when there are no tags
} tp_think;

void tp_think_scan(const char *text, size_t len, tp_think *t);
// Why the text is not "exactly one think block, at the start (after white space),
// terminated, with some reasoning in it", or NULL when it is. The text is needed to
// tell an empty block and what precedes the first tag.
const char *tp_think_problem(const char *text, size_t len, const tp_think *t);

#endif
