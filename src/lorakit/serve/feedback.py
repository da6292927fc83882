"""User feedback on replies (👍 / 👎, optionally a better reply), kept in one SQLite file.

The server writes it (`POST /v1/feedback`); `lorakit feedback export / report` read it
(feedback_export.py). The file is marked as lorakit's (SQLite's application_id header field),
so neither side ever writes into, or reads as feedback, a database that is someone else's.
It is created on the first feedback, not at start: a server that gets none leaves no file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lorakit.errors import ConfigError, DataError, LorakitError
from lorakit.models.paths import cache_dir
from lorakit.serve.schemas import ChatMessage

log = logging.getLogger(__name__)
APP_ID = 0x4C4B4642  # "LKFB" in the database header: a lorakit feedback database
VERSION = 1
MAX_TEXT_CHARS = 32_768  # one reply or better reply
MAX_PROMPT_CHARS = 131_072  # all the messages' text together, or the prompt
MAX_MESSAGES = 256
RATINGS = {"up": 1, "down": -1}
SCHEMA = """
CREATE TABLE feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created INTEGER NOT NULL,               -- unix time
    model TEXT NOT NULL,                    -- the catalog id (adapter or base) that replied
    kind TEXT NOT NULL CHECK (kind IN ('chat', 'text')),
    prompt TEXT NOT NULL,                   -- chat: the messages as JSON; text: the prompt
    reply TEXT NOT NULL,
    rating INTEGER NOT NULL CHECK (rating IN (1, -1)),
    better TEXT,                            -- "a better reply would be..." (down only)
    response_id TEXT                        -- the client's id of the reply, if it gave one
)
"""
COLUMNS = ("created", "model", "kind", "prompt", "reply", "rating", "better", "response_id")
INSERT = f"INSERT INTO feedback ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


def default_path() -> Path:
    return cache_dir() / "feedback.sqlite3"


class FeedbackRequest(BaseModel):
    """`POST /v1/feedback`. Unknown fields are refused (this is lorakit's own route, so a
    misspelt `better` must not be dropped silently)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(max_length=256)
    messages: list[ChatMessage] | None = Field(None, min_length=1, max_length=MAX_MESSAGES)
    prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    reply: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    rating: Literal["up", "down"]
    better: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    response_id: str | None = Field(None, max_length=128)

    @model_validator(mode="after")
    def _check(self):
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give messages (a chat) or prompt (a completion): one of the two")
        if self.better is not None:
            if self.rating != "down":
                raise ValueError("better is a better reply to one rated down: send rating 'down'")
            if not self.better.strip():
                raise ValueError("better is empty: leave it out")
        texts = {"reply": self.reply, "better": self.better, "prompt": self.prompt}
        texts = {k: v for k, v in {**texts, "response_id": self.response_id}.items() if v}
        for i, m in enumerate(self.messages or ()):
            texts[f"messages[{i}]"] = m.text()  # ValueError for non-text parts: a 400
        if sum(len(t) for k, t in texts.items() if k.startswith("messages")) > MAX_PROMPT_CHARS:
            raise ValueError(f"the messages hold over {MAX_PROMPT_CHARS} characters")
        for field, text in texts.items():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate ("\\ud800" in JSON)
                raise ValueError(f"{field} is not valid Unicode text") from None
        return self

    def row(self, now: int | None = None) -> tuple:
        """The values of COLUMNS. Roles as the chat route reads them (developer = system)."""
        if self.messages is not None:
            msgs = [
                {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in self.messages
            ]
            kind, prompt = "chat", json.dumps(msgs, ensure_ascii=False)
        else:
            kind, prompt = "text", self.prompt
        created = int(time.time()) if now is None else now
        rating = RATINGS[self.rating]
        return (
            created,
            self.model,
            kind,
            prompt,
            self.reply,
            rating,
            self.better,
            self.response_id,
        )


class FeedbackUnavailable(LorakitError):
    """The store could not be written (disk full, file removed or locked): a 503."""


@dataclass(frozen=True)
class Feedback:
    """One stored row; `prompt` decoded (a message list for kind 'chat')."""

    id: int
    created: int
    model: str
    kind: str
    prompt: str | list[dict]
    reply: str
    rating: int
    better: str | None
    response_id: str | None


class FeedbackStore:
    """The server's writer: the path checked at start, the file created on first use, one
    connection shared by the threadpool's threads under a lock (SQLite serializes writes
    anyway; the lock keeps the connection's state to one thread at a time)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path).expanduser() if path else default_path()
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self.off = False
        try:
            check_writable(
                self.path, None if path else f"the default feedback database {self.path}"
            )
        except ConfigError as exc:
            if path:  # asked for: refuse to start
                raise
            # the default, in a cache that may be read-only (a locked-down service): serve
            # anyway, without feedback, rather than fail for a route that may never be used
            log.warning("feedback is off: %s, or give --feedback-db FILE", exc)
            self.off = True

    def add(self, row: tuple) -> int:
        """Insert one row (FeedbackRequest.row()); its id. One statement: atomic."""
        if self.off:
            raise FeedbackUnavailable(
                "this server stores no feedback: its default feedback database is unusable "
                "(its operator can give --feedback-db FILE)"
            )
        with self._lock:
            try:
                conn = self._connect()
                cur = conn.execute(INSERT, row)
                return int(cur.lastrowid)
            except (sqlite3.Error, OSError) as exc:
                raise FeedbackUnavailable(f"the feedback could not be stored ({exc})") from None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=5.0, isolation_level=None, check_same_thread=False
            )
            try:
                _initialize(conn)
                conn.execute("PRAGMA journal_mode=WAL")  # readers (an export) never block it
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def check_writable(path: Path, where: str | None = None) -> None:
    """ConfigError (exit 2 at `lorakit serve`) unless the store can be created or is ours."""
    where = where or f"--feedback-db {path}"
    if path.is_dir():
        raise ConfigError(
            f"{where} is a directory — give a file path (e.g. {path}/feedback.sqlite3)"
        )
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK) or not os.access(path.parent, os.W_OK):
            raise ConfigError(f"{where} is not writable — fix its permissions or pick another path")
        with _read_only(path, where, ConfigError) as conn:
            _check_ours(conn, where, ConfigError, empty_ok=True)
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{where} cannot be created ({parent} is not a writable directory) — pick another path"
        )


def _initialize(conn: sqlite3.Connection) -> None:
    """Make an empty database a feedback store, in one transaction; accept one that is ours."""
    where = "the server's --feedback-db"  # the client sees this message: no server path
    conn.execute("BEGIN IMMEDIATE")  # no other writer between the check and the creation
    try:
        if _check_ours(conn, where, FeedbackUnavailable, empty_ok=True):
            conn.execute(SCHEMA)
            conn.execute(f"PRAGMA application_id = {APP_ID}")
            conn.execute(f"PRAGMA user_version = {VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _check_ours(conn, where: str, error: type[LorakitError], empty_ok: bool = False) -> bool:
    """True when the database is empty (and empty_ok); raises `error` unless it is ours."""
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError:  # "file is not a database"
        raise error(
            f"{where} is not a lorakit feedback database (not SQLite) — pick another path"
        ) from None
    if app_id == 0 and not tables and empty_ok:
        return True
    if app_id != APP_ID or "feedback" not in tables:
        raise error(
            f"{where} is not a lorakit feedback database (another SQLite file) — pick another path"
        )
    if version > VERSION:
        raise error(f"{where} was written by a newer lorakit (version {version}) — upgrade lorakit")
    return False


class _read_only:
    """A read-only connection (never creates or changes the file), closed on exit."""

    def __init__(self, path: Path, where: str, error: type[LorakitError]):
        self.path, self.where, self.error = path, where, error

    def __enter__(self) -> sqlite3.Connection:
        uri = self.path.resolve().as_uri() + "?mode=ro"
        try:
            self.conn = sqlite3.connect(uri, uri=True, timeout=5.0)
        except sqlite3.Error as exc:
            raise self.error(f"{self.where} cannot be opened ({exc})") from None
        return self.conn

    def __exit__(self, *exc) -> None:
        self.conn.close()


def read_feedback(path: str | Path | None, model: str | None = None) -> list[Feedback]:
    """Every stored row (of `model` only, if given), oldest first. DataError (exit 2) for a
    path that does not hold a lorakit feedback database."""
    path = Path(path).expanduser() if path else default_path()
    where = f"--db {path}"
    if not path.exists():
        raise DataError(
            f"{where} does not exist — give the file `lorakit serve` stores feedback in "
            f"(its --feedback-db; default {default_path()})"
        )
    if path.is_dir():
        raise DataError(f"{where} is a directory — give the feedback database file")
    query = f"SELECT id, {', '.join(COLUMNS)} FROM feedback"
    args: tuple = ()
    if model is not None:
        query, args = query + " WHERE model = ?", (model,)
    with _read_only(path, where, DataError) as conn:
        _check_ours(conn, where, DataError)
        try:
            rows = conn.execute(query + " ORDER BY id", args).fetchall()
        except sqlite3.Error as exc:
            raise DataError(f"{where} cannot be read ({exc})") from None
    return [_decoded(r, where) for r in rows]


def _decoded(r: tuple, where: str) -> Feedback:
    fid, created, model, kind, prompt, reply, rating, better, response_id = r
    if kind == "chat":
        try:
            prompt = json.loads(prompt)
            ok = isinstance(prompt, list) and all(
                isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt
            )
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise DataError(
                f"{where}: row {fid} holds messages that are not valid JSON — delete the row"
            )
    return Feedback(fid, created, model, kind, prompt, reply, rating, better, response_id)
