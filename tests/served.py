"""A real hyperray Serve app for the serving tests: tiny checkpoints and `jobs/serve.py` on loopback.

The server runs as its own process with its own local Ray (as a user starts it), so it never
meets a Ray cluster the test session started, and stops on SIGINT like Ctrl-C.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from conftest import tiny_config

from hyperray.adapter_output import AdapterOutput
from hyperray.build import build
from hyperray.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def random_checkpoint(directory: Path, seed: int) -> Path:
    """A tiny-llama checkpoint whose hypernetwork emits random, task-dependent B (not zero).

    Serving needs adapters that change answers and differ per task, not a useful model: filling
    the B half of each output projection with noise gives that without a training run.
    """
    config = tiny_config()
    model = build(config)
    generator = torch.Generator().manual_seed(seed)
    output = next(m for m in model.hypernet.modules() if isinstance(m, AdapterOutput))
    with torch.no_grad():
        for kind, proj in zip(output.layout.kinds, output.proj, strict=True):
            b_rows = proj.weight[output.rank * kind.d_in :]
            b_rows.copy_(torch.randn(b_rows.shape, generator=generator) * 0.5)
    return save_checkpoint(model, config, directory)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Client:
    url: str
    api_key: str | None

    def request(
        self, method: str, path: str, body=None, raw: bytes | None = None, key: bool = True
    ) -> tuple[int, bytes, dict]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        headers = {"Content-Type": "application/json"}
        if key and self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=120) as response:
                return response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, error.read(), dict(error.headers)

    def json(self, method: str, path: str, body=None, **kw) -> tuple[int, dict]:
        status, data, _ = self.request(method, path, body, **kw)
        return status, json.loads(data) if data else {}

    def ok(self, method: str, path: str, body=None) -> dict:
        status, data = self.json(method, path, body)
        assert status == 200, (status, data)
        return data

    def metrics(self) -> dict[str, float]:
        status, data, _ = self.request("GET", "/metrics")
        assert status == 200, data
        values = {}
        for line in data.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values


@contextmanager
def serve_process(args: list[str], env: dict[str, str], log: Path, port: int, timeout=300):
    """`python jobs/serve.py ARGS` until /health answers; SIGINT (then SIGKILL) on exit."""
    command = [sys.executable, str(ROOT / "jobs" / "serve.py"), "--port", str(port), *args]
    full_env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"} | env
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"jobs/serve.py exited with {process.returncode}:\n{log.read_text()[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"jobs/serve.py not healthy after {timeout} s:\n{log.read_text()[-4000:]}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
