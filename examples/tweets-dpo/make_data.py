"""Tweet sentiment as preference pairs: for each packaged tweet, the instruction lorakit's
demo trains on (`lorakit.data.formats.tweet_prompt`: answer with the tweet's mood), the right
mood as the chosen answer and a wrong mood as the rejected one; and the same tweets in the
prompt / response form, for the SFT stage that DPO starts from.

    python examples/tweets-dpo/make_data.py OUT_DIR [--train 400] [--eval 100] [--seed 0]

Writes OUT_DIR/sft/{train,validation,test}.jsonl (prompt, response) and
OUT_DIR/prefs/{train,validation,test}.jsonl (prompt, chosen, rejected). The rows come from
the tweets' own splits (deduplicated, split by a hash of the text: lorakit.data.tweets), the
first rows of each (a fair sample: rows are in hash order), so no held-out tweet is trained
on, and both forms hold the same tweets in the same splits.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SPLITS = ("train", "validation", "test")


def pairs_of(texts: list[str], moods: list[str], seed: int = 0) -> list[dict]:
    """{prompt, chosen, rejected} per tweet: the right mood chosen, a wrong one (seeded)
    rejected."""
    from lorakit.data.formats import tweet_prompt
    from lorakit.data.tweets import LABELS

    rng = random.Random(seed)
    rows = []
    for text, mood in zip(texts, moods, strict=True):
        wrong = rng.choice([m for m in LABELS if m != mood])
        rows.append({"prompt": tweet_prompt(text), "chosen": mood, "rejected": wrong})
    return rows


def build(out: Path, train: int = 400, eval_rows: int = 100, seed: int = 0) -> dict[str, int]:
    """Write the two forms under `out`; returns the rows per split."""
    from lorakit.data.split import column
    from lorakit.data.tweets import LABEL_COLUMN, TEXT_COLUMN, load_tweets

    splits, _ = load_tweets()
    sizes = {}
    for form in ("sft", "prefs"):
        (out / form).mkdir(parents=True, exist_ok=True)
    for i, split in enumerate(SPLITS):
        ds = splits[split]
        ds = ds.select(range(min(len(ds), train if split == "train" else eval_rows)))
        pairs = pairs_of(column(ds, TEXT_COLUMN), column(ds, LABEL_COLUMN), seed + i)
        sizes[split] = len(pairs)
        with open(out / "prefs" / f"{split}.jsonl", "w") as f:
            for row in pairs:
                f.write(json.dumps(row) + "\n")
        with open(out / "sft" / f"{split}.jsonl", "w") as f:
            for row in pairs:
                f.write(json.dumps({"prompt": row["prompt"], "response": row["chosen"]}) + "\n")
    return sizes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, default=400, help="training tweets")
    p.add_argument("--eval", type=int, default=100, help="validation and test tweets, each")
    p.add_argument("--seed", type=int, default=0, help="which wrong mood each pair rejects")
    args = p.parse_args()
    sizes = build(args.out, args.train, args.eval, args.seed)
    print(
        f"{args.out}/sft and {args.out}/prefs: " + ", ".join(f"{k} {v}" for k, v in sizes.items())
    )


if __name__ == "__main__":
    main()
