"""The chat and run pages in a real browser (headless Chromium driven by selenium).

A tiny model, taught two answers in a few seconds and saved in a run directory with a
made-up loss curve, real config.yaml and scores.json, is served by the real app; the
browser types, presses Enter, stops, filters and sorts, and every answer it shows is
checked against the engine's own reply (no HTTP). A random model with a long context
serves the stop test. `serve --run RUN` runs as a subprocess while "training" appends to
metrics.jsonl. The browser console must stay free of errors and warnings throughout.

Screenshots go to a temporary directory; with INSTRUCTKIT_SCREENSHOTS=1 they replace
docs/chat.png and docs/run.png (the README's pictures).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from fake_servers import FakeJudge, free_socket, serve_in_thread

from instructkit.cli import main
from instructkit.config import FinetuneConfig, GenerationConfig, save_config
from instructkit.data import get_style
from instructkit.evaluate import JudgeClient, evaluate_responses
from instructkit.model import GPTConfig, GPTModel
from instructkit.model.checkpoints import save_pretrained
from instructkit.serve import Engine, SamplingParams, load_engine
from instructkit.serve.app import create_app
from instructkit.serve.web import CSP, STATIC, create_run_app, run_dir_of
from instructkit.tokenizer import train_tokenizer

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.usefixtures("one_torch_thread")
DOCS = Path(__file__).resolve().parent.parent / "docs"
TAUGHT = [
    ("Name a color.", "Blue, like the clear sky in summer."),
    ("What is the capital of France?", "The capital of France is Paris."),
]
FAMILIES = ["capital", "capital", "color", "color", "color", "spelling"]
RESPONSES = [  # instruction, input, expected, model response, the judge's score
    ("What is the capital of Italy?", "", "Rome", "Rome", 95),
    ("What is the capital of Spain?", "", "Madrid", "The capital is Madrid.", 90),
    ("Name a color of the sky.", "", "Blue", "Blue, like the sky.", 85),
    ("Name the color of grass.", "", "Green", "Blue", 5),
    ("Name a warm color.", "", "Red or orange", "Orange is warm.", 70),
    ("Correct the spelling.", "recieve", "receive", "receive", 100),
]
STEPS = 40  # enough for the tiny model to learn TAUGHT by heart
STALE = 3  # this record's response is edited after scoring: its scores must not be shown


# ---- the model, the run directory and the servers ---------------------------------------


def taught_model(tokenizer, style) -> GPTModel:
    """A tiny GPT that answers the TAUGHT questions (overfit in a few dozen steps), then stops."""
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, context_length=256, emb_dim=32, n_heads=2, n_layers=2
    )
    model = GPTModel(config)
    texts = [style.text({"instruction": q, "input": "", "output": a}) for q, a in TAUGHT]
    ids = [tokenizer.encode(t) + [tokenizer.eos_id] for t in texts]
    width = max(map(len, ids))
    inputs = torch.tensor([i + [tokenizer.eos_id] * (width - len(i)) for i in ids])  # (2, T)
    targets = torch.tensor([i[1:] + [-100] * (width - len(i) + 1) for i in ids])  # (2, T)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(STEPS):
        loss = model.loss(inputs[:, :-1], targets[:, :-1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def metrics_rows(steps: int) -> list[dict]:
    """A loss curve as the trainer logs it: a row per step, a validation loss every 5."""
    rows = []
    for step in range(steps + 1):
        train = 2.0 + 3.0 * 0.9**step + 0.05 * ((step * 7) % 5)
        rows.append(
            {
                "step": step,
                "epoch": round(step / 20, 6),
                "tokens_seen": step * 1500,
                "train_loss": train,
                "val_loss": train + 0.1 if step % 5 == 0 else None,
                "lr": 5e-4,
                "tokens_per_s": None if step == 0 else 3000.0,
            }
        )
    return rows


def write_metrics(path: Path, rows: list[dict], partial: str = "") -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + partial)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """runs/tiny: model/, config.yaml, metrics.jsonl, responses.json and scores.json."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    style = get_style("alpaca")
    corpus = [style.text({"instruction": q, "input": "", "output": a}) for q, a in TAUGHT]
    tokenizer = train_tokenizer(corpus * 20, vocab_size=400)
    save_pretrained(
        taught_model(tokenizer, style), tokenizer, run / "model", metadata={"style": "alpaca"}
    )
    save_config(
        FinetuneConfig(data="data.json", out=str(run), model="random:tiny", style="alpaca"),
        run / "config.yaml",
    )
    write_metrics(run / "metrics.jsonl", metrics_rows(40))
    records = [
        {"instruction": i, "input": x, "output": o, "family": f, "model_response": r}
        for (i, x, o, r, _), f in zip(RESPONSES, FAMILIES, strict=True)
    ]
    (run / "responses.json").write_text(json.dumps(records))

    def judge(prompt: str, attempt: int):
        return ("reply", f"Score: {next(s for i, *_, s in RESPONSES if i in prompt)}")

    with FakeJudge(judge) as fake, JudgeClient("ollama", "judge", fake.url) as client:
        evaluate_responses(run / "responses.json", judge=client, progress=False)
    records[STALE]["model_response"] = "Green, as grass is."
    (run / "responses.json").write_text(json.dumps(records))
    return run


@pytest.fixture(scope="module")
def engine(run_dir) -> Engine:
    return load_engine(str(run_dir), device="cpu", config=GenerationConfig(max_new_tokens=64))


@pytest.fixture(scope="module")
def app_url(engine, run_dir):
    with serve_in_thread(create_app(engine, run_dir=run_dir_of(str(run_dir)))) as url:
        yield url


@pytest.fixture(scope="module")
def random_url():
    """An untrained model with a long context: it rambles until stopped."""
    style = get_style("alpaca")
    tokenizer = train_tokenizer(
        [style.text({"instruction": "x", "input": "", "output": "y"})] * 5, 300
    )
    torch.manual_seed(1)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, context_length=2048, emb_dim=32, n_heads=2, n_layers=2
    )
    engine = Engine(GPTModel(config).eval(), tokenizer, style, "random-tiny")
    with serve_in_thread(create_app(engine)) as url:
        yield url


# ---- the browser ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium; the tests that use it skip when it is not installed."""
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("needs chromium and chromedriver (apt-get install chromium chromium-driver)")

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,860",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(autouse=True)
def quiet_console(request):
    """No errors or warnings in the browser console during a test that uses the browser."""
    if "browser" not in request.fixturenames:
        yield
        return
    driver = request.getfixturevalue("browser")
    driver.get_log("browser")  # drain what earlier tests left
    yield
    problems = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert not problems, problems


def wait(driver, condition, timeout: float = 20, message: str = ""):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: condition(d), message
    )


def open_page(driver, url: str) -> None:
    driver.get(url)
    wait(driver, lambda d: d.execute_script("return Ik.info !== null"), message="page started")


def screenshot(driver, name: str, tmp_path: Path) -> Path:
    """The whole page (up to 1600 px tall) as a PNG, in docs/ with INSTRUCTKIT_SCREENSHOTS=1."""
    path = tmp_path / name
    height = driver.execute_script("return document.documentElement.scrollHeight")
    metrics = {"width": 1280, "height": min(max(height, 860), 1600), "deviceScaleFactor": 1}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**metrics, "mobile": False})
    try:
        time.sleep(0.3)  # the chart redraws for the new size
        assert driver.save_screenshot(str(path))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("INSTRUCTKIT_SCREENSHOTS") == "1":
        shutil.copyfile(path, DOCS / name)
    return path


def answers(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")


def finished_answer(driver, count: int):
    """The count-th answer once its stream has ended."""
    wait(
        driver,
        lambda d: (
            len(answers(d)) >= count and not d.find_elements(By.CSS_SELECTOR, ".msg.streaming")
        ),
    )
    return answers(driver)[count - 1]


def text_of(element) -> str:
    return element.find_element(By.CSS_SELECTOR, ".text").get_property("textContent")


# ---- chat ----------------------------------------------------------------------------


def test_chat_streams_answers_turn_after_turn(browser, app_url, engine, tmp_path):
    open_page(browser, app_url)
    box = browser.find_element(By.TAG_NAME, "textarea")
    assert box.get_attribute("id") == "prompt"
    assert browser.find_element(By.ID, "max-tokens").get_property("value") == "64"
    # Record every length the answer takes on its way, to see it arrive in pieces.
    browser.execute_script(
        """window.lengths = [];
        new MutationObserver(() => {
          const last = [...document.querySelectorAll('.msg.assistant .text')].at(-1);
          if (last) window.lengths.push(last.textContent.length);
        }).observe(document.getElementById('log'),
                   {subtree: true, childList: true, characterData: true});"""
    )
    conversation = []
    for turn, (question, _) in enumerate(TAUGHT, start=1):
        box.send_keys(question, Keys.ENTER)
        answer = finished_answer(browser, turn)
        conversation.append({"role": "user", "content": question})
        expected = engine.chat(conversation, SamplingParams(max_tokens=64))
        reply = expected.run()
        assert text_of(answer) == reply == TAUGHT[turn - 1][1]
        assert answer.find_element(By.CSS_SELECTOR, ".meta").text == (
            f"{expected.completion_tokens} tokens"
        )
        conversation.append({"role": "assistant", "content": reply})
    lengths = browser.execute_script("return window.lengths")
    assert len(set(lengths)) > 5, lengths  # streamed, not one block
    assert [m.text for m in browser.find_elements(By.CSS_SELECTOR, ".msg.user .text")] == [
        q for q, _ in TAUGHT
    ]
    assert box.get_property("value") == ""
    screenshot(browser, "chat.png", tmp_path)

    box.send_keys("first line", Keys.SHIFT, Keys.ENTER, Keys.SHIFT, "second line")
    assert box.get_property("value") == "first line\nsecond line"
    assert len(answers(browser)) == 2  # Shift+Enter sent nothing
    browser.find_element(By.ID, "clear").click()
    assert not browser.find_elements(By.CSS_SELECTOR, ".msg")
    assert browser.find_element(By.ID, "empty").is_displayed()


def test_chat_shows_server_errors(browser, app_url, engine):
    open_page(browser, app_url)
    too_long = "word " * (engine.context_length + 10)
    api = httpx.post(
        f"{app_url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": too_long.strip()}], "stream": True},
    )
    assert api.status_code == 400
    message = api.json()["error"]["message"]
    box = browser.find_element(By.TAG_NAME, "textarea")
    browser.execute_script("arguments[0].value = arguments[1]", box, too_long)
    box.send_keys(Keys.END, Keys.ENTER)
    error = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.error"))[0]
    assert error.get_attribute("role") == "alert"
    assert error.find_element(By.CSS_SELECTOR, ".meta").text == f"Error 400: {message}"
    assert browser.find_element(By.ID, "send").is_displayed()  # ready for the next message
    logged = [(e["level"], e["source"]) for e in browser.get_log("browser")]
    assert [e for e in logged if e[0] in ("SEVERE", "WARNING")] == [("SEVERE", "network")]


def test_stop_mid_answer(browser, random_url):
    open_page(browser, random_url)
    tokens = browser.find_element(By.ID, "max-tokens")
    tokens.clear()
    tokens.send_keys("2000")
    box = browser.find_element(By.TAG_NAME, "textarea")
    box.send_keys("Tell me everything.", Keys.ENTER)
    stop = browser.find_element(By.ID, "stop")
    wait(browser, lambda d: stop.is_displayed() and len(text_of(answers(d)[0])) > 20)
    stop.click()
    wait(browser, lambda d: d.find_element(By.ID, "send").is_displayed())
    answer = answers(browser)[0]
    stopped_at = text_of(answer)
    assert "stopped" in answer.find_element(By.CSS_SELECTOR, ".meta").text
    assert browser.find_element(By.ID, "status").text == "Stopped."
    time.sleep(0.5)
    assert text_of(answer) == stopped_at  # nothing more arrives
    # The server is free again: a short second answer runs to its limit.
    tokens.clear()
    tokens.send_keys("5")
    box.send_keys("And now briefly.", Keys.ENTER)
    second = finished_answer(browser, 2)
    assert second.find_element(By.CSS_SELECTOR, ".meta").text == (
        "5 tokens · cut at the token limit"
    )


def test_api_key_is_asked_once(browser, engine, run_dir):
    app = create_app(engine, api_key="s3cret", run_dir=run_dir)
    with serve_in_thread(app) as url:
        assert httpx.get(url).status_code == 200
        assert httpx.get(f"{url}/web/info").json()["key_required"] is True
        assert httpx.get(f"{url}/run/data/metrics").status_code == 401
        assert httpx.get(f"{url}/v1/models").status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert httpx.get(f"{url}/run/data/metrics", headers=auth).json()["total"] == 41

        browser.get(url)
        dialog = wait(browser, lambda d: d.find_element(By.ID, "key-dialog"))
        wait(browser, lambda d: dialog.is_displayed())
        browser.find_element(By.ID, "key-input").send_keys("s3cret", Keys.ENTER)
        wait(browser, lambda d: not dialog.is_displayed())
        browser.find_element(By.TAG_NAME, "textarea").send_keys(TAUGHT[0][0], Keys.ENTER)
        assert text_of(finished_answer(browser, 1)) == TAUGHT[0][1]
        browser.get(f"{url}/run")  # same tab: the key is remembered
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#responses tbody tr"))
        assert not browser.find_element(By.ID, "key-dialog").is_displayed()


# ---- run page ------------------------------------------------------------------------


def test_run_page(browser, app_url, run_dir, tmp_path):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    scores = json.loads((run_dir / "scores.json").read_text())
    open_page(browser, f"{app_url}/run")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#responses tbody tr"))
    curve = browser.find_element(By.ID, "curve")
    train = curve.find_element(By.CSS_SELECTOR, "path.train").get_attribute("d")
    assert train.count("M") + train.count("L") == len(rows)
    evals = [r for r in rows if r["val_loss"] is not None]
    assert len(curve.find_elements(By.CSS_SELECTOR, "circle.val")) == len(evals) == 9
    axis_labels = [t.text for t in curve.find_elements(By.CSS_SELECTOR, ".axis text")]
    assert "step" in axis_labels and "40" in axis_labels
    screenshot(browser, "run.png", tmp_path)

    browser.find_element(By.XPATH, "//label[contains(., 'Tokens seen')]").click()
    axis_labels = [t.text for t in curve.find_elements(By.CSS_SELECTOR, ".axis text")]
    assert "tokens seen" in axis_labels and "60k" in axis_labels  # 40 steps x 1500 tokens
    assert curve.find_element(By.CSS_SELECTOR, "path.train").get_attribute("d") == train

    config = {
        row.find_element(By.TAG_NAME, "th").text: row.find_element(By.TAG_NAME, "td").text
        for row in browser.find_elements(By.CSS_SELECTOR, "#config tr")
    }
    assert config["model"] == "random:tiny" and config["epochs"] == "2"
    assert config["lr"] == "0.00005" and config["dropout"] == "null"
    assert config["out"] == str(run_dir)

    def table() -> list[tuple[str, str, str]]:
        return [
            tuple(
                r.find_element(By.CSS_SELECTOR, f"td.{c}").text
                for c in ("instruction", "response", "scores")
            )
            for r in browser.find_elements(By.CSS_SELECTOR, "#responses tbody tr")
        ]

    shown = table()
    assert [row[0] for row in shown] == [i + ("\n" + x if x else "") for i, x, *_ in RESPONSES]
    assert shown[STALE][1:] == ("Green, as grass is.", "not scored")
    scored = [r for i, r in enumerate(scores["records"]) if i != STALE]
    for row, record in zip([s for i, s in enumerate(shown) if i != STALE], scored, strict=True):
        assert f"judge {record['judge_score']}\nROUGE-L {record['rouge_l']:.2f}" in row[2]
        assert ("exact match" in row[2]) == record["exact_match"]

    select = browser.find_element(By.ID, "family")
    select.find_element(By.CSS_SELECTOR, "option[value='color']").click()
    assert [row[0] for row in table()] == [RESPONSES[i][0] for i in (2, 3, 4)]
    select.find_element(By.CSS_SELECTOR, "option[value='']").click()
    browser.find_element(By.CSS_SELECTOR, "#sort option[value='rouge_desc']").click()
    best_first = sorted(scored, key=lambda r: -r["rouge_l"])  # stable: file order on ties
    assert [row[1] for row in table()][: len(scored)] == [r["model_response"] for r in best_first]
    assert table()[-1][1] == "Green, as grass is."  # unscored last
    browser.find_element(By.CSS_SELECTOR, "#sort option[value='judge_asc']").click()
    worst_first = sorted(scored, key=lambda r: r["judge_score"])
    assert [row[1] for row in table()][: len(scored)] == [r["model_response"] for r in worst_first]


def test_pages_fit_a_phone(browser, app_url):
    phone = {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", phone)
    try:
        for path in ("/run", "/"):
            open_page(browser, app_url + path)
            wait(browser, lambda d: d.execute_script("return document.readyState") == "complete")
            width = browser.execute_script("return window.innerWidth")
            assert width == 390
            assert browser.execute_script(
                "return document.documentElement.scrollWidth <= window.innerWidth"
            ), path
        for element in ("prompt", "send", "temperature", "max-tokens", "clear"):
            rect = browser.find_element(By.ID, element).rect
            assert rect["x"] >= 0 and rect["x"] + rect["width"] <= 390, element
            assert 0 <= rect["y"] and rect["y"] + rect["height"] <= 844, element
        for control in ("prompt", "temperature", "max-tokens"):  # every control has a label
            assert (
                browser.execute_script(f"return document.getElementById('{control}').labels.length")
                == 1
            )
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_pages_load_nothing_from_elsewhere(app_url):
    for path in ("/", "/run"):
        page = httpx.get(app_url + path)
        assert page.headers["content-security-policy"] == CSP
        assert "http://" not in page.text and "https://" not in page.text
    for file in STATIC.iterdir():
        text = file.read_text().replace("http://www.w3.org/2000/svg", "")  # a name, not a load
        assert "http://" not in text and "https://" not in text, file.name
    assert httpx.get(f"{app_url}/static/..%2Fweb.py").status_code == 404


def test_run_data_routes(app_url, run_dir, tmp_path):
    """What the run page reads: rows since N, a half-written line left out, 304 when unchanged."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    metrics = httpx.get(f"{app_url}/run/data/metrics", params={"since": 38}).json()
    assert (metrics["total"], metrics["rows"]) == (len(rows), rows[38:])
    first = httpx.get(f"{app_url}/run/data/responses")
    again = httpx.get(
        f"{app_url}/run/data/responses", headers={"If-None-Match": first.headers["etag"]}
    )
    assert again.status_code == 304
    doc = first.json()
    assert doc["judge"]["judge"] == "ollama:judge" and len(doc["records"]) == len(RESPONSES)
    assert [r.get("judge_score") for r in doc["records"]] == [
        None if i == STALE else score for i, (*_, score) in enumerate(RESPONSES)
    ]
    assert httpx.get(f"{app_url}/run/data/config").json()["values"]["style"] == "alpaca"

    live = tmp_path / "live"
    live.mkdir()
    write_metrics(live / "metrics.jsonl", metrics_rows(2), partial='{"step": 3, "epo')
    app = create_run_app(live, api_key="k")
    with serve_in_thread(app) as url:
        assert httpx.get(f"{url}/run/data/metrics").status_code == 401
        auth = {"Authorization": "Bearer k"}
        live_rows = httpx.get(f"{url}/run/data/metrics", headers=auth).json()["rows"]
        assert live_rows == metrics_rows(2)
        empty = httpx.get(f"{url}/run/data/responses", headers=auth).json()
        assert (empty["records"], empty["scores_file"]) == ([], False)
        assert httpx.get(f"{url}/run").status_code == 200  # the page itself needs no key
        assert httpx.get(url, follow_redirects=False).headers["location"] == "/run"


def test_serve_needs_a_model_or_a_run(tmp_path, capsys):
    assert main(["serve"]) == 2
    assert main(["serve", "--run", str(tmp_path / "missing")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "--model" in errors[0] and "not a directory" in errors[1]
    assert run_dir_of("random:tiny") is None and run_dir_of(str(tmp_path)) is None


# ---- serve --run: a run still training ---------------------------------------------


def test_serve_run_follows_training(browser, tmp_path):
    run = tmp_path / "training"
    run.mkdir()
    rows = metrics_rows(12)
    line = json.dumps(rows[3])
    write_metrics(run / "metrics.jsonl", rows[:3], partial=line[:20])  # a line half written
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    server = subprocess.Popen(
        [sys.executable, "-m", "instructkit", "serve", "--run", str(run), "--port", str(port)]
        + ["--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()
            time.sleep(0.1)
        assert httpx.get(f"{url}/v1/models").status_code == 404  # no model: no APIs
        open_page(browser, url)  # / goes to /run when there is no model to chat with
        assert browser.current_url == f"{url}/run"

        def drawn() -> int:
            d = browser.execute_script(
                "const p = document.querySelector('#curve path.train');"
                "return p ? p.getAttribute('d') : ''"
            )
            return d.count("M") + d.count("L")

        wait(browser, lambda d: drawn() == 3)
        assert browser.find_element(By.ID, "no-responses").is_displayed()
        write_metrics(run / "metrics.jsonl", rows)  # training goes on
        wait(browser, lambda d: drawn() == len(rows), timeout=15)
        assert browser.find_element(By.CSS_SELECTOR, "#cards").text.startswith("Steps\n12")
    finally:
        browser.get("about:blank")  # stop polling before the server goes
        server.send_signal(signal.SIGINT)
        server.wait(20)
