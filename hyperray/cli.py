"""Command-line settings for every job: ``--config FILE.yaml``, dotted overrides, ``--output-dir``.

    python jobs/train.py --config jobs/configs/tiny.yaml --lora.rank=4 --hypernet.head autoregressive

Overrides go through :func:`hyperray.config.override`, the same strict path YAML files use.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from hyperray.config import Config, load_config


def parse_args(
    argv: Sequence[str] | None = None, description: str = ""
) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        description=description,
        epilog="Any config field can be set as --section.field=value (e.g. --lora.rank=4).",
    )
    parser.add_argument("--config", help="YAML file of config overrides")
    parser.add_argument(
        "--output-dir", help="where the run writes its files (overrides output_dir)"
    )
    known, rest = parser.parse_known_args(argv)
    overrides = dotted_overrides(rest, parser)
    if known.output_dir:
        overrides["output_dir"] = known.output_dir
    return load_config(known.config, overrides), known


def dotted_overrides(args: Sequence[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    """``["--lora.rank=4", "--data.path", "x"]`` -> ``{"lora.rank": "4", "data.path": "x"}``."""
    overrides: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            parser.error(f"unrecognised argument {arg!r}; settings look like --section.field=value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                parser.error(f"{arg} needs a value: {arg}=VALUE")
            value, i = args[i + 1], i + 1
        overrides[key.replace("-", "_")] = value
        i += 1
    return overrides
