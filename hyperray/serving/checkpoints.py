"""The checkpoints a server serves: each named, resolved to a local folder and fingerprinted.

A checkpoint is named by a local folder (``hypernet.safetensors`` + ``hyperray.json``) or an
MLflow URI (``runs:/<run_id>/<path>``, ``models:/<name>/<version>``, ``models:/<name>@<alias>``),
optionally as ``NAME=REF``. MLflow URIs are downloaded once per server start (pinned ones --
a run's artifact or a numbered model version -- are reused from the cache), and the folder that
holds ``hyperray.json`` inside the download is the checkpoint. The fingerprint, a hash of both
files, makes adapter ids unique across checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hyperray.checkpoint import META, WEIGHTS

MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")
_PINNED = re.compile(r"^(runs:/[^/]+/.+|models:/[^/@]+/\d+)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")


@dataclass(frozen=True)
class ServedCheckpoint:
    name: str
    ref: str
    """What the user wrote: a folder or an MLflow URI."""
    path: str
    """The local checkpoint folder."""
    fingerprint: str
    base: str
    """The target model the hypernetwork was trained for (its config name)."""
    rank: int
    modules: tuple[str, ...]


def parse_ref(entry: str) -> tuple[str, str]:
    """``"NAME=REF"`` or ``"REF"`` -> (name, ref); the name defaults to one derived from REF."""
    name, eq, ref = entry.partition("=")
    if eq and _NAME.match(name) and not name.startswith(MLFLOW_SCHEMES):
        return name, ref
    return default_name(entry), entry


def default_name(ref: str) -> str:
    """``runs/default/checkpoint`` -> ``default``; ``models:/hyper/3`` -> ``hyper-3``."""
    if ref.startswith("models:/"):
        name = ref[len("models:/") :].strip("/").replace("/", "-")
    elif ref.startswith("runs:/"):
        run_id, _, path = ref[len("runs:/") :].partition("/")
        name = f"run-{run_id[:8]}" + (
            f"-{Path(path).name}" if Path(path).name != "checkpoint" else ""
        )
    else:
        path = Path(ref).expanduser().resolve()
        name = path.parent.name if path.name == "checkpoint" else path.name
    return re.sub(r"[^A-Za-z0-9._@-]", "-", name).strip("-") or "checkpoint"


def resolve_checkpoints(
    entries: list[str], cache_dir: str | Path, tracking_uri: str | None = None
) -> list[ServedCheckpoint]:
    """Every entry resolved, named uniquely and fingerprinted; fails before serving anything."""
    served, seen = [], {}
    for entry in entries:
        name, ref = parse_ref(entry)
        if name in seen:
            raise ValueError(
                f"two checkpoints are named {name!r} ({seen[name]!r} and {ref!r}); "
                f"name them explicitly as NAME=REF"
            )
        seen[name] = ref
        served.append(describe_folder(name, ref, local_folder(ref, cache_dir, tracking_uri)))
    if not served:
        raise ValueError("no checkpoint to serve: set checkpoints (a folder or an MLflow URI)")
    return served


def local_folder(ref: str, cache_dir: str | Path, tracking_uri: str | None = None) -> Path:
    if not ref.startswith(MLFLOW_SCHEMES):
        path = Path(ref).expanduser().resolve()
        if not (path / META).is_file():
            raise FileNotFoundError(
                f"checkpoint {ref!r} is not a hyperray checkpoint folder "
                f"(expected {META} and {WEIGHTS} in {path})"
            )
        return path
    root = Path(cache_dir).expanduser() / "mlflow"
    root.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(f"{tracking_uri}\0{ref}".encode()).hexdigest()[:16]
    cached = root / key
    if _PINNED.match(ref) and _find_checkpoint(cached, ref, missing_ok=True):
        return _find_checkpoint(cached, ref)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    _download(ref, staging, tracking_uri)
    if cached.exists():
        shutil.rmtree(cached)
    staging.rename(cached)
    return _find_checkpoint(cached, ref)


def describe_folder(name: str, ref: str, path: Path) -> ServedCheckpoint:
    meta = json.loads((path / META).read_text())
    digest = hashlib.sha256()
    for file in (META, WEIGHTS):
        with open(path / file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return ServedCheckpoint(
        name=name,
        ref=ref,
        path=str(path),
        fingerprint=digest.hexdigest(),
        base=meta["target"]["name"],
        rank=int(meta["config"]["lora"]["rank"]),
        modules=tuple(slot[0] for slot in meta["target"]["layout"]["slots"]),
    )


def _download(ref: str, destination: Path, tracking_uri: str | None) -> None:
    from hyperray.tracking import download_artifacts

    try:
        download_artifacts(ref, destination, tracking_uri)
    except Exception as error:
        shutil.rmtree(destination, ignore_errors=True)
        raise FileNotFoundError(
            f"could not download checkpoint {ref!r} from MLflow (tracking URI "
            f"{tracking_uri or 'from MLFLOW_TRACKING_URI'}): {error}"
        ) from error


def _find_checkpoint(root: Path, ref: str, missing_ok: bool = False) -> Path | None:
    found = sorted(p.parent for p in root.rglob(META)) if root.is_dir() else []
    if len(found) == 1:
        return found[0]
    if missing_ok:
        return None
    raise FileNotFoundError(
        f"MLflow artifact {ref!r} holds {len(found)} hyperray checkpoints ({META} files); "
        f"point the URI at the folder of exactly one"
    )
