"""Classification of texts: the predicted label and every class's probability."""

from __future__ import annotations

import torch


@torch.no_grad()
def classify(
    model, tokenizer, texts: list[str], labels: list[str], batch_size: int = 32
) -> list[dict]:
    """[{label, probabilities: {name: p}}] per text."""
    results = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[start : start + batch_size],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=512,
        )
        probs = model(**enc.to(next(model.parameters()).device)).logits.float().softmax(-1)
        for row in probs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            results.append(
                {"label": labels[best], "probabilities": dict(zip(labels, row, strict=True))}
            )
    return results
