"""Task metrics from predictions: pure functions over lists (no model here)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]
) -> dict:
    """accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix (rows = truth)."""
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    ids = list(range(len(labels)))
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    majority = max((list(y_true).count(i) for i in ids), default=0) / max(len(y_true), 1)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0)),
        "majority_baseline": majority,
        "per_class": {
            name: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
        "labels": list(labels),
        "examples": len(y_true),
    }


def _norm(text: str) -> str:
    return " ".join(text.strip().lower().split()).strip(".!")


def generation_metrics(references: Sequence[str], predictions: Sequence[str]) -> dict:
    """exact match (case/space/trailing-punctuation-insensitive), ROUGE-L F1, corpus BLEU."""
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rouge = [
        scorer.score(ref, pred)["rougeL"].fmeasure
        for ref, pred in zip(references, predictions, strict=True)
    ]
    n = max(len(references), 1)
    return {
        "exact_match": sum(
            _norm(a) == _norm(b) for a, b in zip(references, predictions, strict=True)
        )
        / n,
        "rouge_l": sum(rouge) / n,
        "bleu": float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score),
        "examples": len(references),
    }


def perplexity(total_nll: float, tokens: int) -> float:
    return math.exp(min(total_nll / max(tokens, 1), 50.0))
