"""Chat-template fixtures for issue 3: what each model's own Jinja template renders.

    /usr/bin/python3 tests/ref/make_chat_fixtures.py     # Debian's python3-jinja2

Renders chat records with jinja2 the way transformers' apply_chat_template does
(sandboxed environment, trim_blocks, lstrip_blocks, loopcontrols,
add_generation_prompt=False) using the chat_template of each tokenizer_config.json
in ../shared/tokenizers: qwen3, deepseek-v3 (for thinkpipe's deepseek-r1 template)
and llama3. "chatml" uses Qwen2.5-Instruct's template (its non-tool branch, below).
"nemo" has no Jinja template: the NeMo notebook's format is written out here.
Writes tests/fixtures/chat/rendered.jsonl: {"template", "record", "text"} per line.
"""
import json
import os

from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "tokenizers")
PROMPT = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}."

QWEN25 = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


def nemo(messages):
    out = "<extra_id_0>System\n"
    rest = messages
    if messages and messages[0]["role"] == "system":
        out += messages[0]["content"]
        rest = messages[1:]
    out += "\n"
    for m in rest:
        label = {"user": "User", "assistant": "Assistant", "system": "System"}[m["role"]]
        out += "<extra_id_1>" + label + "\n" + m["content"] + "\n"
    return out


def to_messages(record):
    if "messages" in record:
        msgs = []
        for m in record["messages"]:
            content = m["content"]
            if m.get("reasoning_content") is not None:
                content = "<think>\n" + m["reasoning_content"] + "\n</think>\n\n" + content
            msgs.append({"role": m["role"], "content": content})
        return msgs
    msgs = []
    if record.get("system") is not None:
        msgs.append({"role": "system", "content": record["system"]})
    msgs.append({"role": "user", "content": PROMPT.replace("{problem}", record["problem"])})
    if record.get("reasoning") is not None:
        msgs.append({"role": "assistant", "content": "<think>\n" + record["reasoning"] + "\n</think>\n\n" + record["content"]})
    else:
        msgs.append({"role": "assistant", "content": record["content"]})
    return msgs


RECORDS = [
    {"problem": "What is 2 + 3?", "reasoning": "2 plus 3 is 5.", "content": "The answer is \\boxed{5}."},
    {"problem": "Janet has 3 apples and eats one. How many are left?", "reasoning": "\nShe had 3, ate 1.\n3 - 1 = 2.\n",
     "content": "\n\n**2** apples: $\\boxed{2}$"},
    {"problem": "x", "reasoning": "", "content": "y", "system": "You are a careful mathematician."},
    {"problem": "No reasoning here", "content": "Just \\boxed{1}."},
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  2+2?  "},
                  {"role": "assistant", "content": "  4  \n"}]},
    {"messages": [{"role": "user", "content": "First question"},
                  {"role": "assistant", "content": "<think>\nold thoughts\n</think>\n\nFirst answer"},
                  {"role": "user", "content": "Second question"},
                  {"role": "assistant", "content": "<think>\nnew thoughts\n</think>\n\nSecond answer"}]},
    {"messages": [{"role": "user", "content": "Use the field"},
                  {"role": "assistant", "content": "Done.", "reasoning_content": "Reasoning in its own field."}]},
    {"messages": [{"role": "system", "content": "sys one"}, {"role": "user", "content": "q1"},
                  {"role": "assistant", "content": "a1"}, {"role": "system", "content": "sys two"},
                  {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]},
    {"messages": [{"role": "user", "content": "数学：3 + 5 = ?\u00a0"},
                  {"role": "assistant", "content": "<think>\n3+5=8 ✓\n</think>\n\n答案是 \\boxed{8}。\t"}]},
    {"messages": [{"role": "user", "content": "Special text <|im_end|> and <｜User｜> inside"},
                  {"role": "assistant", "content": "Echo: <|eot_id|> <think> tags </think> inline"}]},
    {"messages": [{"role": "user", "content": "\u2003\u3000padded\u0085"},
                  {"role": "assistant", "content": "\n\nleading newlines\n\n"}]},
    {"messages": [{"role": "user", "content": "multi"}, {"role": "assistant", "content": "turn one"},
                  {"role": "user", "content": "again"}, {"role": "assistant", "content": "turn two"}]},
]


def main():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False)
    templates = {"chatml": (QWEN25, "")}
    for name, folder in (("qwen3", "qwen3"), ("deepseek-r1", "deepseek-v3"), ("llama3", "llama3")):
        with open(os.path.join(SHARED, folder, "tokenizer_config.json")) as fh:
            cfg = json.load(fh)
        bos = cfg.get("bos_token") or ""
        if isinstance(bos, dict):
            bos = bos["content"]
        templates[name] = (cfg["chat_template"], bos)
    out = []
    for name, (source, bos) in templates.items():
        tmpl = env.from_string(source)
        for rec in RECORDS:
            text = tmpl.render(messages=to_messages(rec), add_generation_prompt=False, bos_token=bos)
            out.append({"template": name, "record": rec, "text": text})
    for rec in RECORDS:
        out.append({"template": "nemo", "record": rec, "text": nemo(to_messages(rec))})
    path = os.path.join(ROOT, "tests", "fixtures", "chat", "rendered.jsonl")
    with open(path, "w") as fh:
        for x in out:
            fh.write(json.dumps(x, ensure_ascii=False) + "\n")
    print(f"{path}: {len(out)} renderings")


if __name__ == "__main__":
    main()
