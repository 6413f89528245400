import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from hyperray.config import Config, override  # noqa: E402


def tiny_config(**overrides) -> Config:
    """A tiny Llama, the target model as task encoder, small heads: builds in well under a second."""
    base = {
        "model.name": "tiny-llama",
        "encoder.kind": "target",
        "hypernet.hidden_size": 32,
        "hypernet.embedding_size": 8,
        "hypernet.depth": 1,
        "lora.rank": 4,
        "lora.alpha": 8,
        "lora.core_size": 8,
        "data.builtin_instances": 12,
        "data.max_prompt_tokens": 96,
        "data.max_answer_tokens": 16,
        "train.lr": 3e-3,
        "train.warmup_steps": 0,
    }
    return override(Config(), base | overrides)


@pytest.fixture
def config() -> Config:
    return tiny_config()


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster for every slow test that needs one (2 workers + Ray Data)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    # The dashboard stays on: Train V2 frees placement groups through the State API.
    ray.init(address="local", num_cpus=4, include_dashboard=True)
    yield ray
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert process.poll() is None, f"{what} exited with {process.returncode}"
            assert time.monotonic() < deadline, f"{what} did not listen on port {port}"
            time.sleep(0.5)


@pytest.fixture
def mlflow_server(tmp_path):
    """A real ``mlflow server`` on a loopback port; yields (uri, artifacts folder)."""
    port, artifacts = free_port(), tmp_path / "server-artifacts"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
        + ["--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"]
        + ["--artifacts-destination", str(artifacts), "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, server, "mlflow server", timeout=120)
        yield f"http://127.0.0.1:{port}", artifacts
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def ray_head(tmp_path_factory):
    """``ray start --head`` in its own temp dir (other clusters on the machine never see it).

    Yields the dashboard address for ``ray job submit`` and the environment to call it with
    (this venv's ``ray`` on PATH; ``RAY_AUTH_MODE=token``, which local clusters require). ``--block`` keeps the head in the
    foreground, so terminating it stops this cluster alone (``ray stop`` would stop every
    cluster on the machine). Jobs run the Python of this virtual environment.
    """
    temp = Path(tempfile.mkdtemp(prefix="hrt-", dir="/tmp"))  # Ray's socket paths must be short
    port, dashboard = free_port(), free_port()
    # Every agent port is chosen here: the defaults (52365, ...) belong to whichever cluster
    # took them first, e.g. the session's ``ray_cluster``, and an agent that cannot bind never
    # registers, so ``ray job submit`` answers "No available agent" forever.
    agent_ports = [
        f"--{flag}={free_port()}"
        for flag in (
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "metrics-export-port",
        )
    ]
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block"]
        + ["--temp-dir", str(temp), "--port", str(port), "--dashboard-port", str(dashboard)]
        + ["--num-cpus", "4", "--dashboard-host", "127.0.0.1"]
        + agent_ports,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(dashboard, head, "ray head's dashboard")
        address, env = f"http://127.0.0.1:{dashboard}", env | {"RAY_AUTH_MODE": "token"}
        deadline = time.monotonic() + 300
        ray_cli = [str(Path(sys.executable).parent / "ray"), "job", "submit"]
        while True:  # the dashboard listens before its job agent is ready: a no-op job tells
            probe = subprocess.run(
                ray_cli + ["--address", address, "--", "python", "-c", "print('ready')"],
                env=env,
                capture_output=True,
                text=True,
            )
            if probe.returncode == 0:
                break
            last = (probe.stderr.strip().splitlines() or ["(no output)"])[-1]
            if time.monotonic() > deadline:
                agent_log = next((temp / "session_latest" / "logs").glob("dashboard_agent*"), None)
                tail = agent_log.read_text()[-3000:] if agent_log else "(no agent log)"
                raise AssertionError(f"ray job submit kept failing: {last}\nagent log:\n{tail}")
            time.sleep(2)
        yield address, env
    finally:
        head.terminate()
        head.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)
