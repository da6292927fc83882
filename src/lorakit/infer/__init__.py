"""Using a model with an adapter: load it for use (load.py), classify (classify.py), generate
and stream (generate.py), chat (chat.py), merge into a plain model directory (merge.py).
The CLI and the server both call these."""
