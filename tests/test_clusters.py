"""The cluster files load and carry the keys Ray's cluster launcher and KubeRay require."""

import json
from pathlib import Path

import jsonschema
import ray
import yaml

CLUSTERS = Path(__file__).resolve().parents[1] / "clusters"


def test_cluster_launcher_config_validates_against_rays_own_schema():
    config = yaml.safe_load((CLUSTERS / "cluster.yaml").read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]
    workers = [n for n, t in config["available_node_types"].items() if t["resources"].get("GPU")]
    assert workers, "a GPU worker node type"
    assert all(
        t["max_workers"] <= config["max_workers"] for t in config["available_node_types"].values()
    )


def test_kuberay_rayjob_has_the_required_fields():
    job = yaml.safe_load((CLUSTERS / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["metadata"]["name"]
    spec = job["spec"]
    assert "python jobs/train.py" in spec["entrypoint"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    assert "rayStartParams" in head and head["template"]["spec"]["containers"][0]["image"]
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and group["replicas"] >= 1 and "rayStartParams" in group
        container = group["template"]["spec"]["containers"][0]
        assert container["image"] and container["resources"]["limits"]["nvidia.com/gpu"]
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"]
