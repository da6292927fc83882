"""Evaluation: task metrics, evaluation runs, latency and memory."""
