"""Serving: real HTTP against a real Serve app (jobs/serve.py) on loopback, plus its pieces.

The app serves two tiny checkpoints: one from a folder, one from an MLflow ``runs:/`` URI in a
SQLite store the test creates; the API key is set, so every request but /health carries it.
"""

import io
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import yaml
from served import Client, free_port, random_checkpoint, serve_process

from hyperray.checkpoint import load_checkpoint
from hyperray.serving.checkpoints import default_name, parse_ref, resolve_checkpoints
from hyperray.serving.continuous import ContinuousDecoder
from hyperray.serving.generation import AdapterCache, Row, answer_rows, chat_prompt_ids
from hyperray.serving.schemas import ServeArgs
from hyperray.serving.store import LRU, TaskSpec, adapter_id

API_KEY = "test-key-123"


def task(i: int) -> dict:
    return {
        "definition": f"Task {i}: rewrite the input the way the examples do ({i * 7}).",
        "examples": [
            {"input": f"in {i}", "output": f"out {i * 3}"},
            {"input": f"more {i}", "output": f"less {i}"},
        ],
    }


# Fast tests: the pieces, no Ray.


def test_lru_forgets_the_least_recently_used():
    lru = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1
    assert lru.put("c", 3) == ["b"]
    assert "a" in lru and "b" not in lru and len(lru) == 2


def test_adapter_ids_depend_on_checkpoint_and_task_text():
    t1 = TaskSpec("Reverse it.", (("ab", "ba"),))
    t2 = TaskSpec("Reverse it.", (("ab", "ab"),))
    assert adapter_id("f1", t1) == adapter_id("f1", TaskSpec("Reverse it.", (("ab", "ba"),)))
    assert len({adapter_id("f1", t1), adapter_id("f2", t1), adapter_id("f1", t2)}) == 3


def test_checkpoint_names_and_refs(tmp_path):
    assert default_name("runs/default/checkpoint") == "default"
    assert default_name("models:/hyper/3") == "hyper-3"
    assert default_name("runs:/0123456789abcdef/checkpoint") == "run-01234567"
    assert parse_ref("mine=runs:/abc/checkpoint") == ("mine", "runs:/abc/checkpoint")
    assert parse_ref("runs:/abc/checkpoint")[1] == "runs:/abc/checkpoint"
    random_checkpoint(tmp_path / "one" / "checkpoint", seed=0)
    with pytest.raises(FileNotFoundError, match="hyperray.json"):
        resolve_checkpoints([str(tmp_path)], tmp_path / "cache")
    with pytest.raises(ValueError, match="name them explicitly"):
        resolve_checkpoints([str(tmp_path / "one/checkpoint")] * 2, tmp_path / "cache")


def test_serve_config_validates_against_serve_schema_and_args():
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load(open("jobs/serve.yaml"))
    schema = ServeDeploySchema.model_validate(config)
    app = schema.applications[0]
    assert app.import_path == "hyperray.serving.app:build_app"
    args = ServeArgs.model_validate(app.args)
    assert args.autoscaling["max_replicas"] >= args.autoscaling["min_replicas"]
    with pytest.raises(ValueError, match="unknown server argument.*max_batch_sise.*valid:"):
        ServeArgs.model_validate(app.args | {"max_batch_sise": 4})


def test_rows_joining_a_running_decode_answer_as_each_row_alone(tmp_path):
    model, _ = load_checkpoint(random_checkpoint(tmp_path / "ckpt", seed=0))
    cache = AdapterCache(model, capacity=8)
    prompts = ["ab", "a much longer prompt than the others", "xyz 12", "q", "late one", "z"]
    rows = [
        Row(
            f"id{i}",
            TaskSpec(task(i)["definition"], (("in", f"out {i}"),)),
            tuple(model.collator.prompt_ids(prompt)),
            max_tokens=3 + 2 * i,
            ignore_eos=i % 2 == 1,
        )
        for i, prompt in enumerate(prompts)
    ]
    alone = {i: answer_rows(model, cache, [row])[0] for i, row in enumerate(rows)}
    decoder = ContinuousDecoder(model, cache)
    assert ContinuousDecoder.supports(model)
    # Rows arrive at steps 0, 0, 1, 3, 3 and 6; row 5's caller gives up before it finishes.
    arrivals, answers, steps = {0: [0, 1], 1: [2], 3: [3, 4], 6: [5]}, {}, 0
    while steps <= 6 or decoder.rows:
        joining = [(i, rows[i]) for i in arrivals.get(steps, [])]
        finished, failed = decoder.step(joining, leaving={5} if steps == 8 else set())
        assert not failed
        answers.update(finished)
        steps += 1
    assert sorted(answers) == [0, 1, 2, 3, 4], "the row that left is never answered"
    for i, answer in answers.items():
        assert answer.token_ids == alone[i].token_ids, f"row {i}"
        assert answer.finish_reason == alone[i].finish_reason
    assert max(a.batch_size for a in answers.values()) >= 3, "rows decoded together"
    assert decoder._cache is None and not decoder.rows, "the batch empties when everyone leaves"


def test_a_batch_of_adapters_answers_as_each_row_alone(tmp_path):
    model, _ = load_checkpoint(random_checkpoint(tmp_path / "ckpt", seed=0))
    cache = AdapterCache(model, capacity=8)
    rows = []
    for i, prompt in enumerate(["ab", "a much longer prompt than the others", "xyz 12", "q"]):
        spec = TaskSpec(task(i)["definition"], (("in", f"out {i}"),))
        ids = tuple(model.collator.prompt_ids(prompt))
        rows.append(Row(f"id{i}", spec, ids, max_tokens=3 + 2 * i, ignore_eos=i == 3))
    together = answer_rows(model, cache, rows)
    assert cache.generated == 4 and [a.batch_size for a in together] == [4] * 4
    alone = [answer_rows(model, cache, [row])[0] for row in rows]
    assert cache.generated == 4, "cached adapters must not be generated again"
    assert [a.token_ids for a in together] == [a.token_ids for a in alone]
    assert all(len(a.token_ids) <= row.max_tokens for a, row in zip(together, rows, strict=True))
    assert len(together[3].token_ids) == rows[3].max_tokens, "ignore_eos decodes every token"
    assert len({tuple(a.token_ids) for a in together}) > 1, "adapters must change the answers"
    # A single user message reads exactly as a completion prompt does.
    assert chat_prompt_ids(model, [{"role": "user", "content": "ab"}]) == list(rows[0].prompt_ids)


# Slow tests: one real Serve app for the module.


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("serve")
    folder = random_checkpoint(root / "alpha" / "checkpoint", seed=0)
    tracked = random_checkpoint(root / "tracked" / "checkpoint", seed=1)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow = MlflowClient(uri)
    experiment = mlflow.create_experiment("serve", artifact_location=(root / "art").as_uri())
    run = mlflow.create_run(experiment).info.run_id
    mlflow.log_artifacts(run, str(tracked), "checkpoint")
    mlflow.set_terminated(run)
    args = [
        "--checkpoint", str(folder),
        "--checkpoint", f"beta=runs:/{run}/checkpoint",
        "--num-cpus", "2",
        f"--args.mlflow_tracking_uri={uri}",
        f"--args.cache_dir={root / 'cache'}",
        "--args.batch_wait_timeout_s=0.05",
        "--args.max_prompt_chars=200",
        "--args.max_task_chars=600",
        "--args.max_tokens_limit=64",
        "--args.max_checkpoints_per_replica=1",
    ]  # fmt: skip
    env = {"HYPERRAY_API_KEY": API_KEY}
    with serve_process(args, env, root / "serve.log", free_port()) as url:
        yield Client(url, API_KEY), folder


@pytest.mark.slow
def test_create_complete_download_and_load_in_peft(server, tmp_path):
    client, folder = server
    adapter = client.ok("POST", "/v1/adapters", task(1))
    assert adapter["adapter_id"].startswith("hr-") and adapter["checkpoint"] == "alpha"
    assert adapter["rank"] == 4 and adapter["base"] == "tiny-llama"
    assert "model.layers.0.self_attn.q_proj" in adapter["modules"]
    body = {"model": adapter["adapter_id"], "prompt": "hello there", "max_tokens": 8}
    completion = client.ok("POST", "/v1/completions", body | {"return_token_ids": True})
    choice = completion["choices"][0]
    assert completion["object"] == "text_completion" and completion["usage"]["completion_tokens"]

    status, archive, headers = client.request("GET", f"/v1/adapters/{adapter['adapter_id']}/peft")
    assert status == 200 and headers["content-type"] == "application/zip"
    zipfile.ZipFile(io.BytesIO(archive)).extractall(tmp_path / "peft")

    from peft import PeftModel

    model, _ = load_checkpoint(folder)
    prompt = torch.tensor([model.collator.prompt_ids("hello there")])
    end, pad = model.collator.end, model.collator.pad
    settings = {"max_new_tokens": 8, "do_sample": False, "eos_token_id": end, "pad_token_id": pad}
    base = model.target.generate(input_ids=prompt, **settings)[0, prompt.shape[1] :].tolist()
    peft_model = PeftModel.from_pretrained(model.target, tmp_path / "peft").eval()
    with torch.no_grad():
        theirs = peft_model.generate(input_ids=prompt, **settings)[0, prompt.shape[1] :].tolist()
    theirs = theirs[: theirs.index(end)] if end in theirs else theirs
    assert choice["token_ids"] == theirs
    assert choice["text"] == model.tokenizer.decode(theirs, skip_special_tokens=True).strip()
    assert theirs != base[: len(theirs)], "the adapter must change the answer"

    chat = client.ok(
        "POST",
        "/v1/chat/completions",
        {"model": adapter["adapter_id"], "messages": [{"role": "user", "content": "hello there"}]}
        | {"max_tokens": 8},
    )
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": choice["text"]}


@pytest.mark.slow
def test_the_same_task_twice_is_one_adapter_generated_once(server):
    client, _ = server
    before = client.metrics()["hyperray_adapters_generated_total"]
    first = client.ok("POST", "/v1/adapters", task(2))
    second = client.ok("POST", "/v1/adapters", task(2))
    assert first["adapter_id"] == second["adapter_id"]
    assert (first["cached"], second["cached"]) == (False, True)
    assert client.metrics()["hyperray_adapters_generated_total"] == before + 1
    other = client.ok("POST", "/v1/adapters", task(2) | {"checkpoint": "beta"})
    assert other["adapter_id"] != first["adapter_id"], "ids are unique across checkpoints"


@pytest.mark.slow
def test_models_lists_checkpoints_and_adapters_with_their_base(server):
    client, _ = server
    created = client.ok("POST", "/v1/adapters", task(3) | {"checkpoint": "beta"})
    models = {m["id"]: m for m in client.ok("GET", "/v1/models")["data"]}
    assert models["alpha"]["kind"] == "checkpoint" and models["alpha"]["root"] == "tiny-llama"
    assert models["beta"]["ref"].startswith("runs:/")
    listed = models[created["adapter_id"]]
    assert (listed["kind"], listed["parent"], listed["root"]) == ("adapter", "beta", "tiny-llama")


@pytest.mark.slow
def test_inline_task_on_a_checkpoint_equals_its_adapter(server):
    client, _ = server
    prompt = {"prompt": "what now", "max_tokens": 6, "return_token_ids": True}
    inline = client.ok("POST", "/v1/completions", {"model": "beta", "task": task(4)} | prompt)
    created = client.ok("POST", "/v1/adapters", task(4) | {"checkpoint": "beta"})
    assert created["adapter_id"] == inline["adapter_id"]
    by_id = client.ok("POST", "/v1/completions", {"model": created["adapter_id"]} | prompt)
    assert by_id["choices"][0]["token_ids"] == inline["choices"][0]["token_ids"]


@pytest.mark.slow
def test_sixteen_concurrent_adapters_are_batched_and_answer_as_alone(server):
    client, _ = server
    ids = [client.ok("POST", "/v1/adapters", task(100 + i))["adapter_id"] for i in range(16)]
    requests = [
        {
            "model": ids[i],
            "prompt": f"question {i}" + " and more" * (i % 4),
            "max_tokens": 4 + i % 6,
            "return_token_ids": True,
        }
        for i in range(16)
    ]
    alone = [client.ok("POST", "/v1/completions", r)["choices"][0] for r in requests]
    before = client.metrics()
    start = threading.Barrier(16)

    def send(request):
        start.wait()
        return client.ok("POST", "/v1/completions", request)["choices"][0]

    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(send, requests))
    after = client.metrics()
    assert [c["token_ids"] for c in together] == [c["token_ids"] for c in alone]
    assert [c["text"] for c in together] == [c["text"] for c in alone]
    assert len({tuple(c["token_ids"]) for c in alone}) > 1, "adapters must change the answers"

    def batched(m):  # requests answered in a generation pass of more than one row
        return m["hyperray_batch_size_count"] - m['hyperray_batch_size_bucket{le="1"}']

    assert after["hyperray_batch_size_count"] - before["hyperray_batch_size_count"] == 16
    assert batched(after) - batched(before) >= 2, "concurrent requests must share a pass"
    assert after["hyperray_adapters_generated_total"] == before["hyperray_adapters_generated_total"]


@pytest.mark.slow
def test_one_checkpoint_per_replica_evicts_and_reloads_with_the_same_answers(server):
    client, _ = server
    alpha = client.ok("POST", "/v1/adapters", task(5))["adapter_id"]
    body = {"prompt": "again", "max_tokens": 5, "return_token_ids": True}
    first = client.ok("POST", "/v1/completions", {"model": alpha} | body)["choices"][0]
    before = client.metrics()["hyperray_adapters_generated_total"]
    client.ok("POST", "/v1/completions", {"model": "beta", "task": task(5)} | body)
    again = client.ok("POST", "/v1/completions", {"model": alpha} | body)["choices"][0]
    assert again["token_ids"] == first["token_ids"]
    # beta's adapter, then alpha's again: loading beta evicted alpha and its adapters.
    assert client.metrics()["hyperray_adapters_generated_total"] == before + 2


LONG = "x" * 201
BAD = [
    ("POST", "/v1/adapters", b'{"definition": "x", "examples": [', 400, "not valid JSON"),
    ("POST", "/v1/adapters", b"[1, 2]", 422, "JSON object"),
    ("POST", "/v1/adapters", {"examples": [{"input": "a", "output": "b"}]}, 422, "'definition'"),
    ("POST", "/v1/adapters", {"definition": " ", "examples": [{"input": "a", "output": "b"}]}, 422, "'definition': is empty"),
    ("POST", "/v1/adapters", {"definition": 7, "examples": [{"input": "a", "output": "b"}]}, 422, "'definition'"),
    ("POST", "/v1/adapters", {"definition": "x", "examples": [{"input": "a"}]}, 422, "'examples[0].output'"),
    ("POST", "/v1/adapters", {"definition": "x", "examples": []}, 422, "'examples'"),
    ("POST", "/v1/adapters", {"definition": "x" * 700, "examples": [{"input": "a", "output": "b"}]}, 413, "max_task_chars"),
    ("POST", "/v1/adapters", task(0) | {"checkpoint": "gamma"}, 404, "alpha, beta"),
    ("POST", "/v1/completions", {"model": "alpha", "prompt": "hi"}, 422, "'task'"),
    ("POST", "/v1/completions", {"model": "nope", "prompt": "hi"}, 404, "alpha, beta"),
    ("POST", "/v1/completions", {"model": "hr-0000", "prompt": "hi"}, 404, "unknown adapter id 'hr-0000'"),
    ("POST", "/v1/completions", {"model": "alpha", "task": task(0), "prompt": LONG}, 413, "max_prompt_chars"),
    ("POST", "/v1/completions", {"model": "alpha", "task": task(0), "prompt": "hi", "max_tokens": 0}, 422, "'max_tokens'"),
    ("POST", "/v1/completions", {"model": "alpha", "task": task(0), "prompt": "hi", "max_tokens": 65}, 422, "max_tokens_limit"),
    ("POST", "/v1/completions", {"model": "alpha", "task": task(0), "prompt": "hi", "max_tokens": "5"}, 422, "'max_tokens'"),
    ("POST", "/v1/completions", {"model": "alpha", "task": task(0), "prompt": ["hi"]}, 422, "'prompt'"),
    ("POST", "/v1/completions", {"model": "alpha", "task": {"definition": "", "examples": []}, "prompt": "hi"}, 422, "'task.definition'"),
    ("POST", "/v1/chat/completions", {"model": "alpha", "task": task(0), "messages": []}, 422, "'messages'"),
    ("POST", "/v1/chat/completions", {"model": "alpha", "task": task(0), "messages": [{"role": "robot", "content": "x"}]}, 422, "'messages[0].role'"),
    ("GET", "/v1/adapters/hr-0000/peft", None, 404, "hr-0000"),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path", "body", "status", "message"), BAD)
def test_bad_input_is_a_4xx_naming_the_field_and_serving_goes_on(
    server, method, path, body, status, message
):
    client, _ = server
    raw = body if isinstance(body, bytes) else None
    code, error = client.json(method, path, None if raw else body, raw=raw)
    assert code == status, error
    assert message in error["error"]["message"], error
    good = {"model": "alpha", "task": task(0), "prompt": "hi", "max_tokens": 3}
    assert client.ok("POST", "/v1/completions", good)["choices"][0]["finish_reason"] in (
        "stop",
        "length",
    )


@pytest.mark.slow
def test_the_api_key_guards_everything_but_health(server):
    client, _ = server
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/adapters"), ("GET", "/metrics")]:
        status, error = client.json(method, path, task(0), key=False)
        assert status == 401 and "Authorization: Bearer" in error["error"]["message"]
    wrong = Client(client.url, "wrong-key")
    assert wrong.json("GET", "/v1/models")[0] == 401
    assert client.json("GET", "/health", key=False)[0] == 200
    assert client.request("GET", "/", key=False)[0] == 200
