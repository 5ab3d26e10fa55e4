#include "textfilter.h"

#include <string.h>

#include "unicode.h"

// ---- scripts ----

static const char *const script_names[TP_SCRIPT_COUNT] = {
    "latin", "greek", "cyrillic", "armenian", "hebrew", "arabic", "indic", "thai", "hangul", "cjk", "other"};

const char *tp_script_name(tp_script s) { return s < TP_SCRIPT_COUNT ? script_names[s] : "?"; }

tp_script tp_script_of(unsigned cp) {
    if (cp < 0x250 || (cp >= 0x1E00 && cp <= 0x1EFF) || (cp >= 0x250 && cp <= 0x2AF) ||
        (cp >= 0x2C60 && cp <= 0x2C7F) || (cp >= 0xA720 && cp <= 0xA7FF) || (cp >= 0xFF21 && cp <= 0xFF5A))
        return TP_SCRIPT_LATIN;
    if ((cp >= 0x370 && cp <= 0x3FF) || (cp >= 0x1F00 && cp <= 0x1FFF)) return TP_SCRIPT_GREEK;
    if ((cp >= 0x400 && cp <= 0x52F) || (cp >= 0x2DE0 && cp <= 0x2DFF) || (cp >= 0xA640 && cp <= 0xA69F))
        return TP_SCRIPT_CYRILLIC;
    if (cp >= 0x530 && cp <= 0x58F) return TP_SCRIPT_ARMENIAN;
    if (cp >= 0x590 && cp <= 0x5FF) return TP_SCRIPT_HEBREW;
    if ((cp >= 0x600 && cp <= 0x6FF) || (cp >= 0x750 && cp <= 0x77F) || (cp >= 0x8A0 && cp <= 0x8FF) ||
        (cp >= 0xFB50 && cp <= 0xFDFF) || (cp >= 0xFE70 && cp <= 0xFEFF))
        return TP_SCRIPT_ARABIC;
    if (cp >= 0x900 && cp <= 0xDFF) return TP_SCRIPT_INDIC;
    if (cp >= 0xE00 && cp <= 0xE7F) return TP_SCRIPT_THAI;
    if ((cp >= 0x1100 && cp <= 0x11FF) || (cp >= 0x3130 && cp <= 0x318F) || (cp >= 0xAC00 && cp <= 0xD7AF))
        return TP_SCRIPT_HANGUL;
    if ((cp >= 0x3005 && cp <= 0x3007) || (cp >= 0x3040 && cp <= 0x30FF) || (cp >= 0x31F0 && cp <= 0x31FF) ||
        (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0xF900 && cp <= 0xFAFF) ||
        (cp >= 0xFF66 && cp <= 0xFF9F) || (cp >= 0x20000 && cp <= 0x3FFFF))
        return TP_SCRIPT_CJK;
    return TP_SCRIPT_OTHER;
}

bool tp_script_unspaced(unsigned cp) {
    tp_script s = tp_script_of(cp);
    return s == TP_SCRIPT_CJK || s == TP_SCRIPT_THAI ||
           (cp >= 0x0E80 && cp <= 0x0EFF) || (cp >= 0x1000 && cp <= 0x109F) ||  // Lao, Myanmar
           (cp >= 0x1780 && cp <= 0x17FF);                                      // Khmer
}

bool tp_is_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') return false;
    return true;
}

static bool ascii_letter(unsigned char c) { return (unsigned char)((c | 0x20) - 'a') < 26; }

// A run of Latin or Greek letters counts when it is a word, not a lone variable.
typedef struct letter_run {
    tp_script script;  // TP_SCRIPT_COUNT: none
    size_t n;
} letter_run;

static void end_run(tp_script_mix *acc, letter_run *run) {
    if (run->n >= 2) acc->count[run->script] += run->n, acc->letters += run->n;
    run->n = 0, run->script = TP_SCRIPT_COUNT;
}

static void extend_run(tp_script_mix *acc, letter_run *run, tp_script sc) {
    if (run->script != sc) end_run(acc, run), run->script = sc;
    run->n++;
}

void tp_script_mix_add(const char *text, size_t len, tp_script_mix *acc) {
    const unsigned char *s = (const unsigned char *)text;
    letter_run run = {TP_SCRIPT_COUNT, 0};
    for (size_t i = 0; i < len;) {
        unsigned char c = s[i];
        if (c < 0x80) {
            if (c == '\\' && i + 1 < len && ascii_letter(s[i + 1])) {  // a LaTeX command
                end_run(acc, &run);
                for (i++; i < len && ascii_letter(s[i]); i++) {}
                continue;
            }
            if (ascii_letter(c)) extend_run(acc, &run, TP_SCRIPT_LATIN);
            else end_run(acc, &run);
            i++;
            continue;
        }
        uint32_t cp = 0;
        int n = tp_utf8_decode(s + i, len - i, &cp);
        if (n <= 0) {
            end_run(acc, &run);
            i++;
            continue;
        }
        i += (size_t)n;
        uint8_t cls = tp_uc_class(cp);
        if (cls & TP_UC_M) continue;  // combining marks belong to the letter before
        if (!(cls & TP_UC_L)) {
            end_run(acc, &run);
            continue;
        }
        tp_script sc = tp_script_of(cp);
        if (sc == TP_SCRIPT_LATIN || sc == TP_SCRIPT_GREEK) {
            extend_run(acc, &run, sc);
        } else {
            end_run(acc, &run);
            acc->count[sc]++, acc->letters++;
        }
    }
    end_run(acc, &run);
}

void tp_script_mix_finish(tp_script_mix *acc) {
    int best = 0, second = -1;
    for (int s = 1; s < TP_SCRIPT_COUNT; s++)
        if (acc->count[s] > acc->count[best]) best = s;
    for (int s = 0; s < TP_SCRIPT_COUNT; s++)
        if (s != best && acc->count[s] && (second < 0 || acc->count[s] > acc->count[second])) second = s;
    acc->dominant = (tp_script)best;
    acc->second = (tp_script)(second < 0 ? best : second);
    acc->mix = acc->letters ? 1.0 - (double)acc->count[best] / (double)acc->letters : 0.0;
}

void tp_script_mix_of(const char *text, size_t len, tp_script_mix *out) {
    memset(out, 0, sizeof *out);
    tp_script_mix_add(text, len, out);
    tp_script_mix_finish(out);
}

// ---- <think> ----

static const char OPEN[] = "<think>", CLOSE[] = "</think>";
enum { OPEN_LEN = sizeof OPEN - 1, CLOSE_LEN = sizeof CLOSE - 1 };

static const char *find(const char *text, size_t len, size_t from, const char *tag, size_t tlen) {
    return from <= len ? memmem(text + from, len - from, tag, tlen) : NULL;
}

void tp_think_scan(const char *text, size_t len, tp_think *t) {
    memset(t, 0, sizeof *t);
    size_t first_close = len, last_close = 0, last_open = 0;
    bool any_close = false;
    for (const char *p = find(text, len, 0, OPEN, OPEN_LEN); p; p = find(text, len, (size_t)(p - text) + OPEN_LEN, OPEN, OPEN_LEN)) {
        if (!t->opens) t->open_at = (size_t)(p - text);
        last_open = (size_t)(p - text);
        t->opens++;
    }
    for (const char *p = find(text, len, 0, CLOSE, CLOSE_LEN); p; p = find(text, len, (size_t)(p - text) + CLOSE_LEN, CLOSE, CLOSE_LEN)) {
        if (!any_close) first_close = (size_t)(p - text);
        last_close = (size_t)(p - text);
        any_close = true;
        t->closes++;
    }
    t->implicit_open = any_close && (!t->opens || first_close < t->open_at);
    t->body_start = t->implicit_open || !t->opens ? 0 : t->open_at + OPEN_LEN;
    const char *end = find(text, len, t->body_start, CLOSE, CLOSE_LEN);
    t->body_end = end ? (size_t)(end - text) : len;
    if (!t->opens && !any_close) t->answer_start = 0;
    else if (t->opens && (!any_close || last_open > last_close)) t->answer_start = len;  // left open
    else t->answer_start = last_close + CLOSE_LEN;
}

const char *tp_think_problem(const char *text, size_t len, const tp_think *t) {
    int blocks = t->opens + t->implicit_open;  // an implicit block: a "</think>" before any "<think>"
    if (!t->opens && !t->closes) return "no <think> block";
    if (blocks > 1 || t->closes > 1) return "more than one think block";
    if (t->opens && !tp_is_blank(text, t->open_at < len ? t->open_at : len)) return "<think> not at the start";
    if (!t->closes) return "unterminated <think> block";
    if (tp_is_blank(text + t->body_start, t->body_end - t->body_start)) return "empty think block";
    return NULL;
}
