"""The example chat page in a real browser (headless Chromium driven by selenium) against a
real `lorakit serve`: a message gets its mood and a streamed reply, 👎 with a better reply
is stored in the feedback database, and `lorakit feedback export` makes it a preference pair.

Runs where Debian's `chromium` and `chromium-driver` are installed (.ci/run installs them)."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from lorakit.cli import main
from reliability.server_fixtures import KEY, start_server

PAGE = Path(__file__).parents[2] / "examples" / "empathetic-chat" / "index.html"
MOODS = ["negative", "neutral", "positive"]
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
BETTER = "I'm sorry your order is late. Let me look it up for you right now."

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None or DRIVER is None,
        reason="needs Chromium and its driver: apt-get install chromium chromium-driver",
    ),
]


@pytest.fixture(scope="module")
def mood_classifier(tmp_path_factory):
    """A tiny random BERT whose labels are the page's moods (its id2label)."""
    from conftest import _write_bert

    return _write_bert(tmp_path_factory.mktemp("models") / "tiny-mood", MOODS, layers=1)


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """The tiny random Llama with room for the page's system prompts (bytes are tokens)."""
    from tiny_tokenizer import make_tokenizer, tiny_llama

    model = tiny_llama()
    model.config.max_position_embeddings = 1024
    path = tmp_path_factory.mktemp("models") / "tiny-chat"
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)  # SmolLM2's chat template
    return path


@pytest.fixture(scope="module")
def served(chat_model, mood_classifier, tmp_path_factory):
    db = tmp_path_factory.mktemp("feedback") / "feedback.sqlite3"
    args = ["--classifier", str(mood_classifier), "--page", str(PAGE), "--feedback-db", str(db)]
    server = start_server(chat_model, {}, None, args)
    server.db = db
    yield server
    server.stop()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)  # no sandbox: CI runs as root
    # the driver's path given: selenium would otherwise try to download one
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()


def _send(driver, wait, text: str, turn: int):
    """Type `text`, send it, wait for reply `turn` to finish streaming; the reply's element."""
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, "text")
    box.send_keys(text)
    driver.find_element(By.ID, "send").click()
    found = wait.until(
        lambda d: d.find_elements(By.ID, f"reply-{turn}") or d.find_elements(By.CLASS_NAME, "error")
    )[0]
    assert found.get_attribute("id") == f"reply-{turn}", found.text  # the page's error, if any
    return found


def test_thumbs_down_with_a_better_reply_becomes_a_preference_pair(
    served, browser, tmp_path, capsys
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 120)
    browser.get(served.url + "/")
    browser.find_element(By.CSS_SELECTOR, "details summary").click()
    browser.find_element(By.ID, "key").send_keys(KEY)  # the server has an API key
    message = "My order is late again!"
    # a random tiny model may end a reply at once; a reply with no text gets no 👍 / 👎
    for turn in range(1, 4):
        reply = _send(browser, wait, message, turn)
        if reply.find_elements(By.CSS_SELECTOR, ".feedback"):
            break
    else:
        pytest.fail("three empty replies in a row")
    mood_note = reply.find_element(By.CSS_SELECTOR, ".mood").text
    mood = mood_note.split()[1]
    assert mood in MOODS and mood in reply.get_attribute("class").split(), mood_note
    assert mood_note.count("%") == 3 and f"→ {served.base} + system prompt" in mood_note
    # trimmed as the page trims it (JavaScript's whitespace is not Python's)
    text = browser.execute_script("return arguments[0].firstChild.textContent.trim()", reply)
    assert text  # the streamed reply, as the page shows it
    tone = browser.execute_script("return TONES[arguments[0]]", mood)

    reply.find_element(By.CSS_SELECTOR, ".fb-down").click()
    better = reply.find_element(By.CSS_SELECTOR, ".fb-better-text")
    wait.until(lambda d: better.is_displayed())
    better.send_keys(BETTER)
    reply.find_element(By.CSS_SELECTOR, ".fb-send").click()
    thanks = reply.find_element(By.CSS_SELECTOR, ".fb-thanks")
    wait.until(lambda d: thanks.is_displayed())
    assert thanks.text == "Thanks for the feedback!"
    assert not reply.find_element(By.CSS_SELECTOR, ".fb-up").is_enabled()  # one rating per reply

    with contextlib.closing(sqlite3.connect(served.db)) as conn:
        rows = conn.execute(
            "SELECT model, kind, prompt, reply, rating, better, response_id FROM feedback"
        ).fetchall()
    # the turns before, if any, were empty replies: the history the page sent holds them
    history = [{"role": "system", "content": tone}]
    for _ in range(turn - 1):
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
    history.append({"role": "user", "content": message})
    assert len(rows) == 1
    model, kind, prompt, stored, rating, stored_better, response_id = rows[0]
    assert (model, kind, stored, rating, stored_better) == (served.base, "chat", text, -1, BETTER)
    assert json.loads(prompt) == history
    assert response_id.startswith("chatcmpl-")

    out = tmp_path / "prefs.jsonl"
    assert main(["feedback", "export", "--db", str(served.db), "--output", str(out)]) == 0
    assert "1 preference pair (1 with a better reply, 0 👍 vs 👎)" in capsys.readouterr().out
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    assert pairs == [
        {
            "prompt": history,
            "chosen": [{"role": "assistant", "content": BETTER}],
            "rejected": [{"role": "assistant", "content": text}],
            "source": "lorakit feedback export",
        }
    ]
