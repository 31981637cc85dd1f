"""Generate with a causal-LM run's saved adapter:  python -m harness.generate RUN_DIR "prompt" [--file PROMPTS]

The base model is rebuilt as the run's record says and the adapter put on it (harness.eval.load_run); each prompt
is put in the task's template and answered as the run's evaluation answers (greedy, task.max_new_tokens, cut at
task.stop once the answer has begun: harness.lm.generate). Templates:
- alpaca: the prompt is the instruction (`--input` adds the input field), in the Alpaca template;
- table: the prompt is a JSON object of the template's fields, or plain text when the template has one field;
- any other format (WikiSQL, MMLU): the prompt is used as written (e.g. "table: ...\\ncolumns: ...\\nQ: ...\\nA:").
`--file` reads one prompt per line (JSON objects for the table format). Output: one JSON line per prompt.
"""

from __future__ import annotations

import argparse
import json
import string
import sys

from harness.cli import key_value_args
from harness.eval import EvalError, load_run


def render(task, text: str, input_text: str | None = None) -> str:
    """The prompt the model sees for `text`, in the task's template."""
    from harness.tasks.causal import ALPACA_PROMPT, ALPACA_PROMPT_NO_INPUT

    fmt = str(task.format)
    if fmt == "alpaca":
        return (ALPACA_PROMPT.format(instruction=text, input=input_text) if input_text
                else ALPACA_PROMPT_NO_INPUT.format(instruction=text))
    if fmt == "table" and task.prompt_template:
        fields = [f for _, f, _, _ in string.Formatter().parse(task.prompt_template) if f]
        try:
            values = json.loads(text)
        except json.JSONDecodeError:
            values = None
        if not isinstance(values, dict):
            if len(set(fields)) != 1:
                raise EvalError(f"task {task.name!r}: its prompt template needs the fields {sorted(set(fields))}: "
                                f"give a JSON object, e.g. {json.dumps({f: '...' for f in fields})}")
            values = {fields[0]: text}
        missing = sorted(set(fields) - set(values))
        if missing:
            raise EvalError(f"task {task.name!r}: the prompt lacks the template fields {missing}")
        return task.prompt_template.format(**values)
    return text


def generate(run_dir, prompts: list[str], input_text: str | None = None) -> list[dict]:
    from harness.config import is_causal, stop_strings
    from harness.evaluate import decoding
    from harness.lm import generate as lm_generate

    rec, cfg, model, tokenizer, dtype = load_run(run_dir)
    if not is_causal(cfg.task):
        raise EvalError(f"{run_dir}: task {cfg.task.name!r} is a classifier, not a causal LM: nothing to generate "
                        "(python -m harness.eval re-scores it)")
    shown = [render(cfg.task, p, input_text) for p in prompts]
    texts, _ = lm_generate(model, tokenizer, shown, max_new_tokens=int(cfg.task.max_new_tokens),
                           stop=stop_strings(cfg.task), batch_size=int(cfg.train.eval_batch_size),
                           max_prompt_len=int(cfg.train.max_seq_len), dtype=dtype, **decoding(cfg.task))
    return [{"prompt": p, "answer": t} for p, t in zip(prompts, texts)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("prompt", nargs="?", help="one prompt (see the templates above)")
    p.add_argument("--file", help="prompts, one per line")
    p.add_argument("--input", default=None, help="alpaca: the input field")
    a = p.parse_args(key_value_args(sys.argv[1:] if argv is None else list(argv), p))
    prompts = [a.prompt] if a.prompt else []
    if a.file:
        with open(a.file, encoding="utf-8") as f:
            prompts += [line.rstrip("\n") for line in f if line.strip()]
    if not prompts:
        print("error: give a prompt or --file", file=sys.stderr)
        return 2
    try:
        out = generate(a.run_dir, prompts, a.input)
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for row in out:
        print(json.dumps(row, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
