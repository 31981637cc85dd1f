"""One command-line style for every entry point: settings are `key=value`.

`run`, `sweep` and `search` take Hydra overrides (model=..., train.lr=...), `plan` too (plan.device=cpu); the tools
over results (`report`, `analyze`, `eval`, `merge`, `generate`, `bench`) take their options the same way:
`python -m harness.report experiment=lora_table6 plots=false`. The `--name value` / `--switch` spellings keep
working: `key_value_args` turns `key=value` into them for argparse, and `options_and_overrides` parses an entry
point's own options with argparse and hands the rest on as Hydra overrides.
"""

from __future__ import annotations

import argparse

TRUE = ("true", "yes", "1", "on")
FALSE = ("false", "no", "0", "off")


def _switch(value: str, key: str) -> bool:
    v = value.strip().lower()
    if v in TRUE:
        return True
    if v in FALSE:
        return False
    raise SystemExit(f"error: {key}={value!r} is not valid: give true or false")


def key_value_args(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """argv with each `key=value` whose key names one of `parser`'s --options (dashes or underscores; `no_plots`
    and `plots=false` both reach --no-plots) rewritten as that option; anything else is left as it is."""
    options = {}
    for action in parser._actions:
        for s in action.option_strings:
            if s.startswith("--"):
                options[s[2:].replace("-", "_")] = (s, action)
    out: list[str] = []
    for a in argv:
        key, eq, value = a.partition("=")
        if not eq or a.startswith("-") or " " in key:
            out.append(a)
            continue
        key = key.replace("-", "_")
        if key in options:
            flag, action = options[key]
            if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
                on = _switch(value, key)
                if on == isinstance(action, argparse._StoreTrueAction):
                    out.append(flag)
            elif action.nargs not in (None, "?", 1):  # several values: a comma list
                out += [flag, *[v for v in value.split(",") if v]]
            else:
                out += [flag, value]
        elif f"no_{key}" in options and isinstance(options[f"no_{key}"][1], argparse._StoreTrueAction):
            if not _switch(value, key):  # plots=false -> --no-plots
                out.append(options[f"no_{key}"][0])
        else:
            out.append(a)
    return out


def options_and_overrides(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """For entry points whose plain arguments are Hydra overrides (`plan`, `search`): their own options parsed by
    `parser` in either spelling (`json=true` or `--json`, `workers=2` or `--workers 2`), every other argument
    returned as an override. An unknown `--option` is refused by the parser, with its usage."""
    args, rest = parser.parse_known_args(key_value_args(argv, parser))
    bad = [a for a in rest if a.startswith("-")]
    if bad:
        parser.error(f"unknown option {bad[0]!r}")
    return args, rest
