"""Serving benchmark: batched cross-adapter serving against one-at-a-time merged adapters.

A SmolLM2-135M-Instruct checkpoint is served by ``jobs/serve.py`` on loopback. At 1, 4 and 16
concurrent clients, each client uses its own adapter (one built-in task each) and sends a
bounded number of completions back to back (closed loop); we record requests/s and p50/p99
latency. The baseline answers the same requests in this process, one at a time (a lock, the
same client threads): the request's adapter merged into the base weights (W += scale B A),
greedy generation, the weights restored. No HTTP or Ray on the baseline's side.

Both sides use one torch thread: this machine's 2 cores are shared with other jobs, and two
threads contending for them ran many times slower than one. By default every request decodes
exactly ``--max-tokens`` tokens (``ignore_eos``, the usual fixed-length serving benchmark);
``--stop-at-eos`` lets answers end at the end token instead (the built-in tasks' answers are a
few tokens long, so prefill dominates and batching gains less).

    python bench/serve.py [--checkpoint runs/default/checkpoint] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hyperray.build import build, build_tasks  # noqa: E402
from hyperray.checkpoint import load_checkpoint, read_checkpoint_config, save_checkpoint  # noqa: E402
from hyperray.config import Config  # noqa: E402

LEVELS = (1, 4, 16)


def requests_for(
    tasks, clients: int, max_tokens: int, ignore_eos: bool, total: int
) -> list[list[dict]]:
    """Client j's requests: its own task's adapter, that task's instances in turn."""
    per_client = max(1, total // clients)
    return [
        [
            {
                "task": j,
                "prompt": tasks[j].instances[k % len(tasks[j].instances)].input,
                "max_tokens": max_tokens,
                "ignore_eos": ignore_eos,
            }
            for k in range(per_client)
        ]
        for j in range(clients)
    ]


def closed_loop(per_client: list[list[dict]], send) -> dict:
    """Every client sends its requests back to back; latency of each, requests/s overall."""
    latencies: list[float] = []
    answers: dict[tuple[int, int], list[int]] = {}
    lock = threading.Lock()

    def client(j: int) -> None:
        for k, request in enumerate(per_client[j]):
            start = time.perf_counter()
            tokens = send(request)
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                answers[(j, k)] = tokens

    start = time.perf_counter()
    with ThreadPoolExecutor(len(per_client)) as pool:
        list(pool.map(client, range(len(per_client))))
    wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "wall_s": round(wall, 2),
        "req_per_s": round(len(latencies) / wall, 3),
        "p50_s": round(statistics.median(ordered), 3),
        "p99_s": round(ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))], 3),
        "answers": answers,
    }


def post(url: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, port: int, log: Path) -> subprocess.Popen:
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "HYPERRAY_API_KEY": ""}
    command = [
        sys.executable, str(ROOT / "jobs" / "serve.py"),
        "--checkpoint", f"bench={checkpoint}", "--port", str(port), "--num-cpus", "2",
        "--args.generator_cpus=1", "--args.max_batch_size=16", "--args.batch_wait_timeout_s=0.02",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return process
        except OSError:
            time.sleep(2)
    process.kill()
    raise RuntimeError("server not healthy after 600 s")


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()


class MergedBaseline:
    """One request at a time: merge its adapter into W, generate greedily, restore W."""

    def __init__(self, checkpoint: Path, tasks):
        self.model, _ = load_checkpoint(checkpoint)
        self.model.eval()
        self.adapters = [
            self.model.generate_adapter(t.definition, t.positive_examples[:2]) for t in tasks
        ]
        modules = dict(self.model.target.named_modules())
        self.linear = {name: modules[name] for name in self.adapters[0].weights}
        self.original = {n: m.weight.detach().clone() for n, m in self.linear.items()}
        self.lock = threading.Lock()

    @torch.no_grad()
    def send(self, request: dict) -> list[int]:
        model = self.model
        with self.lock:
            adapter = self.adapters[request["task"]]
            for name, module in self.linear.items():
                module.weight += adapter.delta(name)[0]  # (d_out, d_in)
            try:
                ids = model.collator.prompt_ids(request["prompt"])
                out = model.generate_ids(
                    [ids], None, request["max_tokens"], stop_at_end=not request["ignore_eos"]
                )[0]
            finally:
                for name, module in self.linear.items():
                    module.weight.copy_(self.original[name])
        return out


def checkpoint_for(path: str | None, scratch: Path) -> tuple[Path, str]:
    if path and (Path(path) / "hyperray.json").is_file():
        return Path(path), "trained checkpoint"
    config = Config()  # SmolLM2-135M-Instruct, the sentence encoder, rank 8, q_proj + v_proj
    target = scratch / "untrained"
    save_checkpoint(build(config), config, target)
    return target, "untrained hypernetwork (B = 0: adapters change nothing, cost the same)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/default/checkpoint")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--stop-at-eos", action="store_true")
    parser.add_argument(
        "--requests", type=int, default=8, help="requests per level (at least two per client)"
    )
    parser.add_argument("--out", default="bench/results")
    options = parser.parse_args()

    def total(clients: int) -> int:  # two per client at least: a closed loop, not one burst
        return max(options.requests, 2 * clients)

    torch.set_num_threads(1)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="hyperray-bench-serve-"))
    checkpoint, kind = checkpoint_for(options.checkpoint, scratch)
    config = read_checkpoint_config(checkpoint)
    train, _ = build_tasks(config)
    tasks = sorted(train, key=lambda t: t.name)[:16]
    ignore_eos = not options.stop_at_eos
    load_before = os.getloadavg()

    port = free_port()
    server = start_server(checkpoint.resolve(), port, scratch / "serve.log")
    url = f"http://127.0.0.1:{port}"
    served = {}
    try:
        ids = [
            post(url, "/v1/adapters", {
                "definition": t.definition,
                "examples": [{"input": e.input, "output": e.output} for e in t.positive_examples[:2]],
            })["adapter_id"]
            for t in tasks
        ]  # fmt: skip

        def send(request: dict) -> list[int]:
            body = {k: v for k, v in request.items() if k != "task"}
            body |= {"model": ids[request["task"]], "return_token_ids": True}
            return post(url, "/v1/completions", body)["choices"][0]["token_ids"]

        closed_loop(requests_for(tasks, 2, options.max_tokens, ignore_eos, 2), send)  # warm-up
        for clients in LEVELS:
            served[clients] = closed_loop(
                requests_for(tasks, clients, options.max_tokens, ignore_eos, total(clients)), send
            )
            print(f"served   {clients:2d} clients: {_line(served[clients])}", flush=True)
        with urllib.request.urlopen(url + "/metrics") as response:
            metrics = response.read().decode()
    finally:
        stop_server(server)

    baseline_server = MergedBaseline(checkpoint, tasks)
    baseline = {}
    for clients in LEVELS:
        baseline[clients] = closed_loop(
            requests_for(tasks, clients, options.max_tokens, ignore_eos, total(clients)),
            baseline_server.send,
        )
        print(f"baseline {clients:2d} clients: {_line(baseline[clients])}", flush=True)

    rows = []
    for clients in LEVELS:
        s, b = served[clients], baseline[clients]
        same = sum(s["answers"][key] == b["answers"][key] for key in s["answers"])
        rows.append(
            {
                "clients": clients,
                "requests": s["requests"],
                "served": {k: v for k, v in s.items() if k != "answers"},
                "baseline": {k: v for k, v in b.items() if k != "answers"},
                "throughput_ratio": round(s["req_per_s"] / b["req_per_s"], 2),
                "p50_ratio": round(b["p50_s"] / s["p50_s"], 2),
                "p99_ratio": round(b["p99_s"] / s["p99_s"], 2),
                "same_tokens_as_baseline": f"{same}/{s['requests']}",
            }
        )
    result = {
        "checkpoint": str(options.checkpoint if kind.startswith("trained") else "untrained"),
        "checkpoint_kind": kind,
        "model": config.model.name,
        "rank": config.lora.rank,
        "target_modules": config.model.target_modules,
        "max_tokens": options.max_tokens,
        "ignore_eos": ignore_eos,
        "torch_threads": 1,
        "max_batch_size": 16,
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "batch_size_metrics": [line for line in metrics.splitlines() if "batch_size" in line],
        "levels": rows,
        "command": " ".join(["python", "bench/serve.py", *sys.argv[1:]]),
    }
    (out / "serve.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "serve.md").write_text(markdown(result))
    print(markdown(result))


def _line(r: dict) -> str:
    return f"{r['req_per_s']:.3f} req/s, p50 {r['p50_s']:.2f} s, p99 {r['p99_s']:.2f} s ({r['requests']} requests)"


def markdown(result: dict) -> str:
    lines = [
        f"Model {result['model']}, {result['checkpoint_kind']}, rank {result['rank']}, "
        f"{'+'.join(result['target_modules'])}; {result['max_tokens']} new tokens per request"
        f"{' (ignore_eos)' if result['ignore_eos'] else ' (or fewer, at the end token)'}; "
        f"1 torch thread on a shared 2-core CPU (load average {result['load_average_before_after'][0]} "
        f"before, {result['load_average_before_after'][1]} after). Baseline: the same requests one "
        f"at a time with the adapter merged per request. Command: `{result['command']}`.",
        "",
        "| clients | requests | served req/s | p50 / p99 (s) | baseline req/s | p50 / p99 (s) "
        "| throughput ratio (goal at 16 >= 4) | p50 ratio | same tokens |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["levels"]:
        s, b = r["served"], r["baseline"]
        lines.append(
            f"| {r['clients']} | {r['requests']} | {s['req_per_s']:.3f} | {s['p50_s']:.2f} / "
            f"{s['p99_s']:.2f} | {b['req_per_s']:.3f} | {b['p50_s']:.2f} / {b['p99_s']:.2f} | "
            f"{r['throughput_ratio']:.2f} | {r['p50_ratio']:.2f} | {r['same_tokens_as_baseline']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
