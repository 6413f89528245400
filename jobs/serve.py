"""Serve checkpoints locally: ``python jobs/serve.py --checkpoint runs/default/checkpoint``.

Starts a local Ray, runs the Serve app of ``hyperray.serving.app:build_app`` on
``--host``/``--port`` and serves until interrupted (Ctrl-C or SIGTERM), then shuts Serve and Ray
down. ``--config jobs/serve.yaml`` reads the first application's args and http_options; flags
override them: ``--checkpoint`` (repeatable; a folder or MLflow URI, optionally NAME=REF) and
``--args.KEY=VALUE`` for any other server argument (``--args.max_batch_size=8``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from hyperray.cli import dotted_overrides  # noqa: E402
from hyperray.serving.schemas import ServeArgs  # noqa: E402


def parse(argv: list[str] | None) -> tuple[ServeArgs, str, int, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Any server argument can be set as --args.KEY=VALUE (e.g. --args.max_batch_size=8).",
    )
    parser.add_argument("--config", help="a Serve config YAML (jobs/serve.yaml)")
    parser.add_argument("--checkpoint", action="append", help="folder or MLflow URI, as NAME=REF")
    parser.add_argument("--host", help="default: the config's, else 127.0.0.1")
    parser.add_argument("--port", type=int, help="default: the config's, else 8000")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    known, rest = parser.parse_known_args(argv)
    args, http = {}, {}
    if known.config:
        config = yaml.safe_load(Path(known.config).read_text())
        args = dict(config["applications"][0].get("args") or {})
        http = config.get("http_options") or {}
    for key, value in dotted_overrides(rest, parser).items():
        section, _, name = key.partition(".")
        if section != "args":
            parser.error(
                f"unrecognised setting --{key}; server arguments look like --args.KEY=VALUE"
            )
        args[name] = _value(value)
    if known.checkpoint:
        args["checkpoints"] = known.checkpoint
    host = known.host or http.get("host", "127.0.0.1")
    port = known.port or int(http.get("port", 8000))
    return ServeArgs.model_validate(args), host, port, known


def main(argv: list[str] | None = None) -> None:
    args, host, port, known = parse(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from hyperray.serving.app import build_app

    stop = threading.Event()
    ray.init(address="local", num_cpus=known.num_cpus, include_dashboard=False)
    # After ray.init, which installs its own SIGTERM handler: stop cleanly instead.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(args), name="hyperray", route_prefix="/")
        print(f"hyperray serving on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
    finally:
        serve.shutdown()
        ray.shutdown()


def _value(text: str):
    """``--args.KEY=VALUE``: JSON where it parses (numbers, lists, objects), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


if __name__ == "__main__":
    main()
