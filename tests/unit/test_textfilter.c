// Script mixing and <think> block checks (libcore/textfilter.h).
#include "textfilter.h"
#include "test.h"

static tp_script_mix mix_of(const char *s) {
    tp_script_mix m;
    tp_script_mix_of(s, strlen(s), &m);
    return m;
}

static void test_script_mix(void) {
    tp_script_mix m = mix_of("Let me compute the sum of the first ten primes: 2 + 3 + 5 = 10.");
    CHECK(m.dominant == TP_SCRIPT_LATIN && m.mix == 0 && m.letters > 30);
    // LaTeX commands and lone variables are not English inside a Chinese trace
    m = mix_of("因此 x = \\frac{1}{2}，所以 \\boxed{\\dfrac{\\pi}{3}} 是答案 π");
    CHECK_MSG(m.dominant == TP_SCRIPT_CJK && m.mix == 0, "%s %.3f", tp_script_name(m.dominant), m.mix);
    // R1-style language mixing: English reasoning drifting into Chinese
    m = mix_of("Let me check the computation again. 我们需要验证这个结果是否正确 then continue.");
    CHECK(m.dominant == TP_SCRIPT_LATIN && m.second == TP_SCRIPT_CJK);
    CHECK_MSG(m.mix > 0.2 && m.mix < 0.5, "%.3f", m.mix);
    CHECK(m.count[TP_SCRIPT_CJK] == 14);
    m = mix_of("Привет, это тест with some English words");
    CHECK(m.dominant == TP_SCRIPT_LATIN || m.dominant == TP_SCRIPT_CYRILLIC);
    CHECK(m.mix > 0.3);
    m = mix_of("12 + 34 = 46; (x, y) -> z");
    CHECK(m.letters == 0 && m.mix == 0);
    CHECK(!strcmp(tp_script_name(TP_SCRIPT_HANGUL), "hangul"));
    CHECK(tp_script_of(0xAC00) == TP_SCRIPT_HANGUL && tp_script_of(0x3042) == TP_SCRIPT_CJK &&
          tp_script_of(0x0416) == TP_SCRIPT_CYRILLIC && tp_script_of(0x05D0) == TP_SCRIPT_HEBREW);
    // reasoning and content are judged together
    tp_script_mix acc = {0};
    tp_script_mix_add("Some English reasoning here", 27, &acc);
    tp_script_mix_add("答案是五", 12, &acc);
    tp_script_mix_finish(&acc);
    CHECK(acc.dominant == TP_SCRIPT_LATIN && acc.count[TP_SCRIPT_CJK] == 4);
}

static const char *problem(const char *s, tp_think *t) {
    tp_think_scan(s, strlen(s), t);
    return tp_think_problem(s, strlen(s), t);
}

static void test_think_blocks(void) {
    tp_think t;
    const char *ok = "<think>\nadd 2 and 3\n</think>\n\nThe answer is \\boxed{5}.";
    CHECK(problem(ok, &t) == NULL);
    CHECK(t.opens == 1 && t.closes == 1 && !t.implicit_open);
    CHECK(!strncmp(ok + t.body_start, "\nadd 2", 6) && !strncmp(ok + t.body_end, "</think>", 8));
    CHECK(!strcmp(ok + t.answer_start, "\n\nThe answer is \\boxed{5}."));
    CHECK(problem("  \n<think>x</think>y", &t) == NULL);  // white space before is fine
    CHECK_STR(problem("<think>a</think><think>b</think>answer", &t), "more than one think block");
    CHECK(t.answer_start == strlen("<think>a</think><think>b</think>"));
    CHECK_STR(problem("Sure! <think>a</think>answer", &t), "<think> not at the start");
    CHECK_STR(problem("<think>a long thought that was cut off", &t), "unterminated <think> block");
    CHECK(t.answer_start == strlen("<think>a long thought that was cut off") && t.body_end == t.answer_start);
    CHECK_STR(problem("<think>\n \n</think>answer", &t), "empty think block");
    CHECK_STR(problem("no tags at all", &t), "no <think> block");
    CHECK(t.answer_start == 0);
    // the template opened the block (DeepSeek-R1's does): the text starts inside it
    const char *implicit = "reasoning here\n</think>\n\\boxed{4}";
    CHECK(problem(implicit, &t) == NULL);
    CHECK(t.implicit_open && t.body_start == 0 && !strcmp(implicit + t.answer_start, "\n\\boxed{4}"));
    CHECK_STR(problem("a</think>b<think>c</think>d", &t), "more than one think block");
    CHECK_STR(problem("a</think>b</think>d", &t), "more than one think block");
    // the answer part of "boxed inside think only" has no \boxed
    const char *inside = "<think>so it is \\boxed{7}</think>I am not sure.";
    CHECK(problem(inside, &t) == NULL && !strstr(inside + t.answer_start, "boxed"));
    // a NUL byte is text, not white space: before the tag, or as the whole body
    const char nul_before[] = "\0<think>a</think>b", nul_body[] = "<think>\0</think>b";
    tp_think_scan(nul_before, sizeof nul_before - 1, &t);
    CHECK_STR(tp_think_problem(nul_before, sizeof nul_before - 1, &t), "<think> not at the start");
    tp_think_scan(nul_body, sizeof nul_body - 1, &t);
    CHECK(tp_think_problem(nul_body, sizeof nul_body - 1, &t) == NULL);
}

static void test_blank_and_unspaced(void) {
    CHECK(tp_is_blank("", 0) && tp_is_blank(" \t\r\n", 4));
    CHECK(!tp_is_blank(" \0 ", 3) && !tp_is_blank("\v", 1) && !tp_is_blank(" x", 2));
    // one table of ranges: what the script table calls CJK is unspaced, and so are Thai, Lao, Khmer
    unsigned unspaced[] = {0x4E00, 0x3042, 0x30A2, 0x3005, 0xFF76, 0x20000, 0x0E01, 0x0E81, 0x1000, 0x1780};
    for (size_t i = 0; i < sizeof unspaced / sizeof *unspaced; i++) CHECK_MSG(tp_script_unspaced(unspaced[i]), "U+%04X", unspaced[i]);
    unsigned spaced[] = {'a', 0xE9, 0x0416, 0xAC00, 0x05D0, 0x0627, 0x0915};
    for (size_t i = 0; i < sizeof spaced / sizeof *spaced; i++) CHECK_MSG(!tp_script_unspaced(spaced[i]), "U+%04X", spaced[i]);
    for (unsigned cp = 0x3000; cp < 0x10000; cp++)
        if (tp_script_of(cp) == TP_SCRIPT_CJK) CHECK_MSG(tp_script_unspaced(cp), "U+%04X", cp);
}

int main(void) {
    RUN(test_script_mix);
    RUN(test_think_blocks);
    RUN(test_blank_and_unspaced);
    return TEST_SUMMARY();
}
