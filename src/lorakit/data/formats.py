"""Task formats -> token ids and labels (label -100: no loss at that position).

- classification: a text column and a label column -> input_ids, labels (one class id per row).
- causal LM, plain text: loss on every token.
- causal LM, prompt/response: loss on the response tokens only.
- causal LM, chat `messages` ([{role, content}, ...]) rendered with the tokenizer's chat
  template: loss on the assistant turns only. The turns are found by rendering the
  conversation prefix by prefix, so no `{% generation %}` support is needed in the template.

Alpaca, ShareGPT and preference data are brought to one of these forms first
(lorakit.data.convert); lorakit.data.detect says which format a table holds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from datasets import Dataset, DatasetDict

from lorakit.data.load import check_classes, check_columns
from lorakit.data.split import column
from lorakit.errors import DataError

log = logging.getLogger(__name__)
IGNORE = -100  # the label that torch's cross_entropy (and transformers' losses) skip
TWEET_INSTRUCTION = "Classify the sentiment of this tweet as positive, neutral or negative."


def label_names(ds: Dataset | DatasetDict, label_column: str) -> list[str]:
    """Class names in a fixed order: the training labels, sorted (numbers numerically)."""
    train = ds["train"] if isinstance(ds, DatasetDict) else ds
    return [str(v) for v in check_classes(train, label_column)]


def encode_classification(
    ds: Dataset,
    tokenizer,
    label_names: Sequence[str],
    *,
    text_column: str = "text",
    label_column: str = "label",
    max_length: int = 128,
) -> Dataset:
    """input_ids (truncated to max_length) and labels = the index of each row's label."""
    check_columns(ds, [text_column, label_column])
    ids_of = {name: i for i, name in enumerate(label_names)}
    labels = [ids_of.get(str(v), -1) for v in column(ds, label_column)]
    unknown = sorted(
        {str(v) for v, i in zip(column(ds, label_column), labels, strict=True) if i < 0}
    )
    if unknown:
        raise DataError(
            f"labels {unknown[:5]} do not occur in the training data (classes: {list(label_names)})"
            " — fix the labels, or add examples of them to the training data"
        )
    texts = text_column_values(ds, text_column)
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    return Dataset.from_dict({"input_ids": ids, "labels": labels})


def text_column_values(ds: Dataset, name: str) -> list[str]:
    """Column `name` as strings (missing values as ""); a DataError when it holds numbers or
    other non-text values, naming the column and the first such value."""
    values = column(ds, name)
    for v in values:
        if v is not None and not isinstance(v, str):
            raise DataError(
                f"column {name!r} holds {type(v).__name__} values, not text (e.g. {v!r:.40}) — "
                "name the column that holds the text (--text-column for classification), or "
                "fix the file"
            )
    return [v or "" for v in values]


def encode_text(
    ds: Dataset, tokenizer, *, text_column: str = "text", max_length: int = 512
) -> Dataset:
    """Plain text for language modelling: loss on every token; EOS closes each untruncated text."""
    check_columns(ds, [text_column])
    encoded = tokenizer(text_column_values(ds, text_column))["input_ids"]
    ids = [_with_eos(x, tokenizer)[:max_length] for x in encoded]
    return _lm_dataset(ids, [list(x) for x in ids])


def encode_prompt_response(
    ds: Dataset,
    tokenizer,
    *,
    prompt_column: str = "prompt",
    response_column: str = "response",
    max_length: int = 512,
    use_chat_template: bool = False,
    system: str | None = None,
) -> Dataset:
    """Prompt then response; loss on the response tokens (and the EOS after them) only.

    Without the chat template the two are concatenated as they are: put any separator
    ("\\n", "Answer:") at the end of the prompt. With it, they become a user turn and an
    assistant turn (after `system`, if given). Rows whose response is cut off entirely by
    max_length are dropped.
    """
    check_columns(ds, [prompt_column, response_column])
    prompts = text_column_values(ds, prompt_column)
    responses = text_column_values(ds, response_column)
    if use_chat_template:
        head = [{"role": "system", "content": system}] if system else []
        chats = [
            [*head, {"role": "user", "content": p}, {"role": "assistant", "content": r}]
            for p, r in zip(prompts, responses, strict=True)
        ]
        return _encode_chats(tokenizer, chats, max_length)
    pairs = prompt_response_examples(tokenizer, prompts, responses)
    return _lm_dataset([x[:max_length] for x, _ in pairs], [y[:max_length] for _, y in pairs])


def prompt_response_examples(
    tokenizer, prompts: Sequence[str], responses: Sequence[str]
) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of each prompt + response + EOS, labels IGNORE on the prompt
    (untruncated; no chat template)."""
    if not prompts:
        return []  # tokenizers reject an empty batch
    prompt_ids = tokenizer(list(prompts))["input_ids"]
    response_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    out = []
    for p, r in zip(prompt_ids, response_ids, strict=True):
        r = _with_eos(r, tokenizer)
        out.append((p + r, [IGNORE] * len(p) + r))
    return out


def encode_chat(
    ds: Dataset, tokenizer, *, messages_column: str = "messages", max_length: int = 512
) -> Dataset:
    """Conversations rendered with the chat template; loss on the assistant turns only."""
    check_columns(ds, [messages_column])
    return _encode_chats(tokenizer, column(ds, messages_column), max_length)


def chat_example(
    tokenizer, messages: Sequence[dict], first: int = 0
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation, labels IGNORE outside assistant turns.

    first: the index of the first message that may be trained on; assistant turns before it
    are context (a preference pair's prompt history).

    An assistant turn spans from the end of the prefix rendered with the generation prompt
    (`...<|im_start|>assistant\n`) to the end of the prefix that includes the turn (its
    content, end-of-turn token and the template's trailing newline). Tokens are labelled by
    their character offsets in the full rendering, so BPE merges across turn boundaries
    cannot shift the mask.
    """
    full, spans = _chat_spans(tokenizer, messages, first)
    return _label_spans(tokenizer, [full], [spans])[0]


def _chat_spans(
    tokenizer, messages: Sequence[dict], first: int = 0
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "the tokenizer has no chat template — use a chat model (e.g. smollm2-135m), or the "
            "prompt/response format without --chat-template"
        )
    messages = [_clean_message(m) for m in messages]
    full = _render(tokenizer, messages, generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or i < first:
            continue
        start_text = _render(tokenizer, messages[:i], generation_prompt=True) if i else ""
        end_text = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if not (full.startswith(end_text) and end_text.startswith(start_text)):
            raise DataError(
                "the chat template does not render conversation prefixes as prefixes of the whole "
                "conversation, so assistant turns cannot be located — use the prompt/response "
                "format, or a model whose template renders turns independently"
            )
        spans.append((len(start_text), len(end_text)))
    if not spans:
        raise DataError("a conversation has no assistant turn — every chat needs at least one")
    return full, spans


def _label_spans(tokenizer, texts: list[str], spans: list[list[tuple[int, int]]]):
    """Tokenize `texts` in one batch; label the tokens that start inside a span."""
    if not texts:
        return []  # tokenizers reject an empty batch
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for ids, offsets, text_spans in zip(
        encoded["input_ids"], encoded["offset_mapping"], spans, strict=True
    ):
        labels = [
            t if any(s <= a < e for s, e in text_spans) else IGNORE
            for t, (a, _) in zip(ids, offsets, strict=True)
        ]
        out.append((list(ids), labels))
    return out


def tweet_prompt(text: str) -> str:
    """The instruction the demo's chat model answers with one word: the sentiment."""
    return f"{TWEET_INSTRUCTION}\nTweet: {text}\nSentiment:"


def tweet_messages(text: str, label: str | None = None) -> list[dict]:
    """A user turn with the tweet prompt, plus the answer as an assistant turn when given."""
    messages = [{"role": "user", "content": tweet_prompt(text)}]
    if label is not None:
        messages.append({"role": "assistant", "content": label})
    return messages


def tweets_as_chat(
    ds: Dataset, *, text_column: str = "text", label_column: str = "sentiment"
) -> Dataset:
    """Tweets as instruction chats: columns `messages` and the original label column."""
    check_columns(ds, [text_column, label_column])
    texts, labels = column(ds, text_column), column(ds, label_column)
    messages = [tweet_messages(t, str(y)) for t, y in zip(texts, labels, strict=True)]
    return Dataset.from_dict({"messages": messages, label_column: labels})


def _encode_chats(tokenizer, chats: Sequence[Sequence[dict]], max_length: int) -> Dataset:
    pairs = chat_examples(tokenizer, chats)
    return _lm_dataset([x[:max_length] for x, _ in pairs], [y[:max_length] for _, y in pairs])


def chat_examples(
    tokenizer, chats: Sequence[Sequence[dict]], firsts: Sequence[int] | None = None
) -> list[tuple[list[int], list[int]]]:
    """chat_example of each conversation (untruncated), tokenized in one batch."""
    rendered = []
    for i, messages in enumerate(chats):
        try:
            rendered.append(_chat_spans(tokenizer, messages, firsts[i] if firsts else 0))
        except ChatTemplateError as exc:
            roles = [m.get("role") for m in messages if isinstance(m, dict)]
            raise DataError(
                f"the chat template rejected conversation {i + 1} (roles {roles}): {exc.reason} "
                "— fix the data to the form the model's template accepts, or use another model"
            ) from None
    return _label_spans(tokenizer, [r[0] for r in rendered], [r[1] for r in rendered])


def _lm_dataset(ids: list[list[int]], labels: list[list[int]]) -> Dataset:
    keep = [i for i, y in enumerate(labels) if any(t != IGNORE for t in y)]
    if len(keep) < len(ids):
        log.warning(
            "dropped %d of %d examples with no target token left after truncation",
            len(ids) - len(keep),
            len(ids),
        )
    if not keep:
        raise DataError("no example has a target token left — raise max_length")
    return Dataset.from_dict(
        {"input_ids": [ids[i] for i in keep], "labels": [labels[i] for i in keep]}
    )


def _with_eos(ids: list[int], tokenizer) -> list[int]:
    """`ids` ending with EOS (once), so the model learns where a text ends."""
    eos = tokenizer.eos_token_id
    return ids if eos is None or ids[-1:] == [eos] else [*ids, eos]


class ChatTemplateError(DataError):
    """The chat template raised while rendering (its raise_exception, or a template bug)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(
            f"the chat template rejected a conversation ({reason}) — fix the data to the form "
            "the model's template accepts, or use another model"
        )


def _render(tokenizer, messages: Sequence[dict], generation_prompt: bool) -> str:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=generation_prompt
        )
    except TemplateError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ChatTemplateError(reason) from None
    except (TypeError, ValueError, KeyError) as exc:  # e.g. content that is not a string
        raise ChatTemplateError(f"{type(exc).__name__}: {str(exc).splitlines()[0]:.120}") from exc


def _clean_message(message) -> dict:
    # arrow gives every message every key seen in the column; unset ones arrive as None
    if not isinstance(message, dict) or "role" not in message or "content" not in message:
        raise DataError(
            f"chat messages must be {{'role': ..., 'content': ...}} objects, got {message!r:.80} "
            "— fix the data, or read ShareGPT's from/value messages with --format sharegpt"
        )
    return {k: v for k, v in message.items() if v is not None}
