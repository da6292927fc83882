"""The feedback loop: `POST /v1/feedback` on a real `lorakit serve` (tiny Llama + an adapter)
stores rows in SQLite; `lorakit feedback export` turns them into preference pairs that
lorakit's own DPO data path reads; `lorakit feedback report` scores them. Bad bodies, bad
paths and existing outputs are refused without touching anything."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from lorakit.cli import main
from lorakit.serve.feedback import MAX_TEXT_CHARS
from reliability.server_fixtures import make_adapters, start_server

CHAT = [
    {"role": "system", "content": "Be kind."},
    {"role": "user", "content": "My order is late."},
]
OTHER = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
TEXT = "Once upon a time"
# (model, prompt: messages or text, reply, rating, better); "base" is the base model's id
PLAN = [
    ("a0", CHAT, "R1", "down", "B1"),
    ("a0", CHAT, "R2", "up", None),
    ("a0", CHAT, "R3", "down", None),
    ("a0", CHAT, "R3", "down", None),  # the same 👎 twice: one pair R2 > R3
    ("a0", CHAT, "R4", "up", None),
    ("a0", CHAT, "R4", "down", None),  # contested: R4 goes into no pair
    ("a0", CHAT, "R1", "down", "B1"),  # the same better reply again: one pair
    ("base", CHAT, "R2", "up", None),  # another model: pairs of its own
    ("base", CHAT, "R3", "down", None),
    ("a0", OTHER, "R5", "up", None),  # a 👍 alone: no pair
    ("a0", TEXT, " there was", "down", " a cat"),
    ("a0", TEXT, " a dog", "up", None),
]
# (model, chosen, rejected), in the order of their first feedback row; the base model's
# R2 > R3 is a0's pair again: written once
CHAT_PAIRS = [("a0", "B1", "R1"), ("a0", "R2", "R1"), ("a0", "R2", "R3")]
TEXT_PAIRS = [(" a cat", " there was"), (" a dog", " there was")]


@pytest.fixture(scope="module")
def served(llama_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("feedback")
    adapters = make_adapters(llama_model_dir, root / "adapters", ["a0"])
    db = root / "store" / "feedback.sqlite3"  # its directory does not exist yet
    args = ["--feedback-db", str(db), "--max-body-bytes", "200000"]
    server = start_server(llama_model_dir, adapters, None, args)
    server.db = db
    yield server
    server.stop()


def _post(served, body, headers=None, **kw) -> httpx.Response:
    headers = served.headers if headers is None else headers
    return httpx.post(f"{served.url}/v1/feedback", headers=headers, timeout=30, **kw, json=body)


def _body(served, model, prompt, reply, rating, better=None) -> dict:
    body = {"model": served.base if model == "base" else model, "reply": reply, "rating": rating}
    body["messages" if isinstance(prompt, list) else "prompt"] = prompt
    return {**body, **({"better": better} if better is not None else {})}


@pytest.fixture(scope="module")
def posted(served):
    """PLAN sent through the API: (ids returned, unix time before, after)."""
    assert not served.db.exists()  # created on the first feedback, not at start
    before = int(time.time())
    ids = []
    for row in PLAN:
        r = _post(served, _body(served, *row))
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "ok"
        ids.append(r.json()["id"])
    return ids, before, int(time.time())


def _rows(db: Path) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)) as conn:
        return conn.execute(
            "SELECT id, created, model, kind, prompt, reply, rating, better FROM feedback ORDER BY id"
        ).fetchall()


def test_feedback_is_stored_row_by_row(served, posted):
    ids, before, after = posted
    assert ids == list(range(1, len(PLAN) + 1))
    rows = _rows(served.db)
    assert len(rows) == len(PLAN)
    for (_, created, model, kind, prompt, reply, rating, better), plan in zip(
        rows, PLAN, strict=True
    ):
        want_model, want_prompt, want_reply, want_rating, want_better = plan
        assert before <= created <= after
        assert model == (served.base if want_model == "base" else want_model)
        assert kind == ("chat" if isinstance(want_prompt, list) else "text")
        assert (reply, rating, better) == (
            want_reply,
            1 if want_rating == "up" else -1,
            want_better,
        )
        if kind == "text":
            assert prompt == want_prompt
    assert json.loads(rows[0][4]) == CHAT
    # the developer role is stored as the chat route reads it: a system message
    assert json.loads(rows[9][4]) == [{"role": "system", "content": "Be brief."}, OTHER[1]]


def test_metrics_count_feedback_by_model_and_rating(served, posted):
    text = httpx.get(f"{served.url}/metrics", timeout=30).text
    counts = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("lorakit_feedback_total{")
    }
    assert counts == {
        'lorakit_feedback_total{model="a0",rating="down"}': 6.0,
        'lorakit_feedback_total{model="a0",rating="up"}': 4.0,
        f'lorakit_feedback_total{{model="{served.base}",rating="down"}}': 1.0,
        f'lorakit_feedback_total{{model="{served.base}",rating="up"}}': 1.0,
    }


def _bad(served):
    ok = _body(served, "a0", CHAT, "R", "down")
    return [
        ({**ok, "model": "nope"}, 404, "no generation model or adapter named 'nope'"),
        ({**ok, "rating": "meh"}, 400, "rating"),
        ({**ok, "rating": 1}, 400, "rating"),
        ({**ok, "prompt": "x"}, 400, "one of the two"),
        ({k: v for k, v in ok.items() if k != "messages"}, 400, "one of the two"),
        ({**ok, "messages": []}, 400, "messages"),
        ({**ok, "reply": ""}, 400, "reply"),
        ({**ok, "reply": "x" * (MAX_TEXT_CHARS + 1)}, 400, "reply"),
        ({**ok, "better": "y" * (MAX_TEXT_CHARS + 1)}, 400, "better"),
        ({**ok, "rating": "up", "better": "B"}, 400, "rated down"),
        ({**ok, "better": "  "}, 400, "better is empty"),
        ({**ok, "messages": [{"role": "robot", "content": "x"}]}, 400, "role"),
        ({**ok, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "text"),
        ({**ok, "bettr": "typo"}, 400, "bettr"),
        ({**ok, "response_id": "r" * 129}, 400, "response_id"),
        ([ok], 400, ""),
    ]


def test_bad_bodies_are_4xx_and_store_nothing(served):
    def count() -> int:
        return len(_rows(served.db)) if served.db.exists() else 0

    before = count()
    for body, status, words in _bad(served):
        r = _post(served, body)
        assert r.status_code == status, (body if len(str(body)) < 300 else "long", r.text)
        assert words in r.json()["error"]["message"], r.text
    raw = {"headers": {**served.headers, "content-type": "application/json"}}
    for where, body in [  # lone surrogates: no UTF-8 encodes them
        ("reply", b'{"model": "a0", "prompt": "x", "reply": "\\ud800", "rating": "up"}'),
        ("prompt", b'{"model": "a0", "prompt": "\\udfff", "reply": "y", "rating": "up"}'),
        ("messages", b'{"model": "a0", "messages": [{"role": "user", "content": "a\\ud800"}], '
                     b'"reply": "y", "rating": "up"}'),
    ]:  # fmt: skip
        r = httpx.post(f"{served.url}/v1/feedback", content=body, timeout=30, **raw)
        assert r.status_code == 400 and where in r.json()["error"]["message"], r.text
    r = httpx.post(f"{served.url}/v1/feedback", content=b"{not json", timeout=30, **raw)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    big = _body(served, "a0", CHAT, "x" * 30_000, "down", "y" * 30_000)
    big["messages"] = [{"role": "user", "content": "z" * 30_000}] * 5  # over the body limit
    r = _post(served, big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    ok = _body(served, "a0", CHAT, "R", "up")
    for headers in ({}, {"Authorization": "Bearer wrong-key"}):
        r = _post(served, ok, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert count() == before


def _fails(capsys, args, match):
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert match in err[0], err[0]


def _export(capsys, db, out, *args) -> list[dict]:
    capsys.readouterr()
    assert main(["feedback", "export", "--db", str(db), "--output", str(out), *args]) == 0
    said = capsys.readouterr().out
    rows = [json.loads(line) for line in Path(out).read_text().splitlines()]
    assert said.startswith(f"{len(rows)} preference pair")
    return rows


def test_export_pairs_of_both_kinds_deduped_and_filtered(served, posted, tmp_path, capsys):
    db = served.db  # read while the server holds it open (WAL)
    _fails(capsys, ["feedback", "export", "--db", str(db), "--output", str(tmp_path / "x.jsonl")],
           "both chat and completion feedback")  # fmt: skip
    assert not (tmp_path / "x.jsonl").exists()
    chat = _export(capsys, db, tmp_path / "chat.jsonl", "--kind", "chat")
    for row, (_, chosen, rejected) in zip(chat, CHAT_PAIRS, strict=True):
        assert row == {
            "prompt": CHAT,
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "source": "lorakit feedback export",
        }
    text = _export(capsys, db, tmp_path / "text.jsonl", "--kind", "text")
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in text] == [
        (TEXT, chosen, rejected) for chosen, rejected in TEXT_PAIRS
    ]
    a0 = _export(capsys, db, tmp_path / "a0.jsonl", "--model", "a0", "--kind", "chat")
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in a0] == [
        (c, r) for m, c, r in CHAT_PAIRS if m == "a0"
    ]
    base = _export(capsys, db, tmp_path / "base.jsonl", "--model", served.base)  # chat only
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in base] == [
        ("R2", "R3")
    ]
    _fails(capsys, ["feedback", "export", "--db", str(db), "--output", str(tmp_path / "y.jsonl"),
                    "--model", "nope"], "no feedback on 'nope'")  # fmt: skip


def test_exported_pairs_are_what_dpo_trains_on(served, posted, tmp_path, capsys, llama_model_dir):
    from transformers import AutoTokenizer

    from lorakit.config import TrainConfig
    from lorakit.data.prepare import prepare

    out = tmp_path / "prefs.jsonl"
    _export(capsys, served.db, out, "--kind", "chat")
    tokenizer = AutoTokenizer.from_pretrained(llama_model_dir)
    config = TrainConfig(task="causal-lm", data=str(out), objective="dpo")
    prepared = prepare(config, tokenizer)
    pairs = [row for split in ("train", "validation", "test") for row in prepared.pairs[split]]
    assert len(pairs) == len(CHAT_PAIRS)
    seen = set()
    for row in pairs:
        n = next(i for i, t in enumerate(row["chosen_labels"]) if t != -100)
        # the chat template over the stored messages; loss on the assistant reply only
        assert row["chosen_input_ids"][:n] == row["rejected_input_ids"][:n]
        assert "Be kind." in tokenizer.decode(row["chosen_input_ids"][:n])
        chosen = tokenizer.decode([t for t in row["chosen_labels"] if t != -100])
        rejected = tokenizer.decode([t for t in row["rejected_labels"] if t != -100])
        seen.add((chosen.split("<")[0].strip(), rejected.split("<")[0].strip()))
    assert seen == {(c, r) for _, c, r in CHAT_PAIRS}


def test_report_scores_per_model(served, posted, capsys):
    capsys.readouterr()
    assert main(["feedback", "report", "--db", str(served.db), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["models"] == sorted(
        [
            {"model": "a0", "up": 4, "down": 6, "score": 0.4, "better": 3, "pairs": 5},
            {"model": served.base, "up": 1, "down": 1, "score": 0.5, "better": 0, "pairs": 1},
        ],
        key=lambda m: m["model"],
    )
    # the base model's pair is one of a0's: counted once in all
    assert result["total"] == {
        "up": 5,
        "down": 7,
        "score": round(5 / 12, 4),
        "better": 3,
        "pairs": 5,
    }
    assert main(["feedback", "report", "--db", str(served.db), "--model", "a0"]) == 0
    table = capsys.readouterr().out
    assert "a0" in table and "40.0%" in table and served.base not in table


def _foreign_sqlite(path: Path) -> Path:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE feedback (id INTEGER, note TEXT)")
        conn.execute("INSERT INTO feedback VALUES (1, 'mine')")
    return path


def test_bad_databases_are_one_line_errors(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    foreign = _foreign_sqlite(tmp_path / "other.sqlite3")
    snapshot = {p: p.read_bytes() for p in (text, foreign)}
    cases = [
        (tmp_path / "missing.sqlite3", "does not exist"),
        (tmp_path, "is a directory"),
        (text, "not a lorakit feedback database (not SQLite)"),
        (foreign, "not a lorakit feedback database (another SQLite file)"),
    ]
    for db, words in cases:
        _fails(capsys, ["feedback", "report", "--db", str(db)], words)
        _fails(capsys, ["feedback", "export", "--db", str(db), "--output",
                        str(tmp_path / "out.jsonl")], words)  # fmt: skip
    assert not (tmp_path / "out.jsonl").exists()
    assert not (tmp_path / "missing.sqlite3").exists()  # reading never creates it
    assert {p: p.read_bytes() for p in snapshot} == snapshot
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "other.sqlite3"]


def test_serve_refuses_a_feedback_db_it_cannot_own(tmp_path, capsys, llama_model_dir):
    """Checked before any model loads: one line, exit 2, nothing changed."""
    text = tmp_path / "notes.txt"
    text.write_text("keep me\n")
    foreign = _foreign_sqlite(tmp_path / "other.sqlite3")
    snapshot = {p: p.read_bytes() for p in (text, foreign)}
    cases = [
        (tmp_path, "is a directory"),
        (text / "feedback.sqlite3", "cannot be created"),  # under a file
        (text, "not a lorakit feedback database"),
        (foreign, "not a lorakit feedback database"),
    ]
    for db, words in cases:
        _fails(capsys, ["serve", "--model", str(llama_model_dir), "--feedback-db", str(db)], words)
    assert {p: p.read_bytes() for p in snapshot} == snapshot
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "other.sqlite3"]


def test_an_existing_output_needs_overwrite_and_must_be_an_export(served, posted, tmp_path, capsys):
    out = tmp_path / "prefs.jsonl"
    first = _export(capsys, served.db, out, "--kind", "text")
    args = ["feedback", "export", "--db", str(served.db), "--output", str(out), "--kind", "chat"]
    _fails(capsys, args, "already exists — pass --overwrite")
    assert [json.loads(line) for line in out.read_text().splitlines()] == first
    assert len(_export(capsys, served.db, out, "--kind", "chat", "--overwrite")) == len(CHAT_PAIRS)
    # a preference file the user wrote, in the same columns but unmarked, is never replaced
    mine = tmp_path / "mine.jsonl"
    mine.write_text(json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}) + "\n")
    for target in (mine, served.db, tmp_path):
        before = target.read_bytes() if target.is_file() else None
        args = ["feedback", "export", "--db", str(served.db), "--output", str(target)]
        _fails(
            capsys,
            [*args, "--kind", "chat", "--overwrite"],
            "is not a file `lorakit feedback export` wrote",
        )
        assert (target.read_bytes() if target.is_file() else None) == before
    assert len(_rows(served.db)) == len(PLAN)


def test_metrics_labels_stay_bounded():
    from lorakit.serve.metrics import MAX_FEEDBACK_MODELS, Metrics

    metrics = Metrics()
    for i in range(MAX_FEEDBACK_MODELS + 10):
        metrics.count_feedback(f"adapter-{i}", "up")
    metrics.count_feedback("adapter-0", "down")  # a name already counted keeps its label
    text = metrics.render().decode()
    lines = [x for x in text.splitlines() if x.startswith("lorakit_feedback_total{")]
    assert len(lines) == MAX_FEEDBACK_MODELS + 2  # + "other" up, + adapter-0 down
    assert 'lorakit_feedback_total{model="other",rating="up"} 10.0' in lines


def test_concurrent_feedback_gets_one_row_each(served, posted):
    """Last in this file: it adds rows the tests above count."""
    import concurrent.futures

    before = len(_rows(served.db))
    bodies = [_body(served, "a0", TEXT, f" reply {i}", "up") for i in range(32)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda b: _post(served, b), bodies))
    assert [r.status_code for r in answers] == [200] * 32
    ids = sorted(r.json()["id"] for r in answers)
    assert ids == list(range(before + 1, before + 33))  # one row each, none lost
    stored = {row[5] for row in _rows(served.db)[before:]}
    assert stored == {f" reply {i}" for i in range(32)}


def test_rated_pairs_per_prompt_are_capped_and_odd_paths_work(tmp_path, capsys):
    """n 👍 × m 👎 distinct replies to one prompt would be n·m pairs: a hostile client could
    make the export quadratic, so --max-pairs-per-prompt bounds them (earliest first). The
    database's path may hold any character a file name can (it is a URI to SQLite)."""
    from lorakit.serve.feedback import FeedbackRequest, FeedbackStore

    db = tmp_path / "odd dir #1?%20" / "fb?.sqlite3"
    store = FeedbackStore(db)
    for i in range(30):
        for rating in ("up", "down"):
            body = FeedbackRequest(model="m", prompt="p", reply=f"{rating} {i}", rating=rating)
            store.add(body.row())
    store.close()
    assert sorted(p.name for p in db.parent.iterdir()) == ["fb?.sqlite3"]  # WAL files gone
    out = tmp_path / "prefs.jsonl"
    rows = _export(capsys, db, out)
    assert len(rows) == 100  # the default cap, of 30 × 30 = 900
    assert (rows[0]["chosen"], rows[0]["rejected"]) == ("up 0", "down 0")
    rows = _export(capsys, db, out, "--overwrite", "--max-pairs-per-prompt", "7")
    assert [r["rejected"] for r in rows] == [f"down {i}" for i in range(7)]


def test_a_file_that_appears_before_the_first_feedback_is_not_written(tmp_path):
    """Checked at start, created on first use: a file put there in between is refused then
    too (a 503 for the client, whose message names no server path), and left as it was."""
    from lorakit.serve.feedback import FeedbackRequest, FeedbackStore, FeedbackUnavailable

    db = tmp_path / "feedback.sqlite3"
    store = FeedbackStore(db)
    db.write_text("somebody's notes\n")
    row = FeedbackRequest(model="m", prompt="p", reply="r", rating="up").row()
    with pytest.raises(FeedbackUnavailable) as info:
        store.add(row)
    assert str(tmp_path) not in str(info.value) and "could not be stored" in str(info.value)
    assert db.read_text() == "somebody's notes\n"
    db.unlink()
    assert store.add(row) == 1  # the next one creates it
    store.close()


def test_an_unusable_default_turns_feedback_off_instead_of_failing_the_start(
    tmp_path, monkeypatch, caplog
):
    """--feedback-db given: it must work (exit 2 otherwise). The default path, in a cache
    that may be read-only: the server starts and /v1/feedback answers 503."""
    from lorakit.errors import ConfigError
    from lorakit.serve.feedback import FeedbackRequest, FeedbackStore, FeedbackUnavailable

    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache directory would be\n")
    monkeypatch.setenv("LORAKIT_CACHE", str(blocker))
    with pytest.raises(ConfigError, match="cannot be created"):
        FeedbackStore(blocker / "feedback.sqlite3")
    store = FeedbackStore(None)
    assert "feedback is off" in caplog.text
    row = FeedbackRequest(model="m", prompt="p", reply="r", rating="up").row()
    with pytest.raises(FeedbackUnavailable, match="stores no feedback") as info:
        store.add(row)
    assert str(tmp_path) not in str(info.value)
    assert blocker.read_text() == "a file where the cache directory would be\n"
