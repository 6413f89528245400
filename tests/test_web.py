"""The web page in headless Chromium: type a task, generate an adapter, run an input, see the answer.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them); the
test fails, not skips, without them.
"""

import shutil
import time

import pytest
from served import Client, free_port, random_checkpoint, serve_process

API_KEY = "web-key-456"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    folder = random_checkpoint(root / "alpha" / "checkpoint", seed=0)
    args = ["--checkpoint", str(folder), "--num-cpus", "2"]
    with serve_process(args, {"HYPERRAY_API_KEY": API_KEY}, root / "serve.log", free_port()) as url:
        yield Client(url, API_KEY)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail(
            "the web test needs Chromium and its driver: "
            "apt-get install -y --no-install-recommends chromium chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(tmp_path / "downloads"),
            "download.prompt_for_download": False,
        },
    )
    browser = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    yield browser
    browser.quit()


def wait_for(browser, element_id: str, timeout: float = 120) -> str:
    """The element's text once the page marks it done; fails on an error state."""
    from selenium.webdriver.support.ui import WebDriverWait

    element = browser.find_element("id", element_id)
    WebDriverWait(browser, timeout).until(
        lambda _: element.get_attribute("data-state") in ("done", "error")
    )
    text = element.get_attribute("textContent")
    assert element.get_attribute("data-state") == "done", text
    return text


@pytest.mark.slow
def test_type_a_task_generate_run_and_download(server, browser, tmp_path):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    by_id = lambda name: browser.find_element("id", name)  # noqa: E731
    by_id("api-key").send_keys(API_KEY, Keys.TAB)
    WebDriverWait(browser, 60).until(
        lambda _: by_id("checkpoint").get_attribute("value") == "alpha"
    )
    by_id("definition").send_keys("Reverse the given word.")
    inputs = browser.find_elements("css selector", ".ex-input")
    outputs = browser.find_elements("css selector", ".ex-output")
    for field, text in zip(inputs + outputs, ["cat", "stone", "tac", "enots"], strict=True):
        field.send_keys(text)
    by_id("generate").click()
    shown = wait_for(browser, "adapter")

    task = {
        "definition": "Reverse the given word.",
        "examples": [{"input": "cat", "output": "tac"}, {"input": "stone", "output": "enots"}],
    }
    adapter = server.ok("POST", "/v1/adapters", task)
    assert adapter["cached"], "the page must have created this very adapter"
    assert adapter["adapter_id"] in shown and "rank 4" in shown

    by_id("input").send_keys("lamp")
    max_tokens = by_id("max-tokens")
    max_tokens.clear()
    max_tokens.send_keys("6")
    by_id("run").click()
    answer = wait_for(browser, "answer")
    expected = server.ok(
        "POST",
        "/v1/completions",
        {"model": adapter["adapter_id"], "prompt": "lamp", "max_tokens": 6},
    )["choices"][0]["text"]
    assert answer == (expected or "(empty answer)")

    by_id("download").click()
    target = tmp_path / "downloads" / f"{adapter['adapter_id']}.zip"
    deadline = time.monotonic() + 30
    while not target.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    status, archive, _ = server.request("GET", f"/v1/adapters/{adapter['adapter_id']}/peft")
    assert status == 200 and target.read_bytes() == archive
