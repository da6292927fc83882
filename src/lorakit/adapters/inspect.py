"""A summary of an adapter directory without loading a model (for `lorakit inspect`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from lorakit.adapters.files import read_config, read_weights
from lorakit.adapters.peft_format import parse_key
from lorakit.config import StrictConfig


class InspectConfig(StrictConfig):
    """`lorakit inspect ADAPTER`."""

    adapter: Path = Field(
        description="An adapter directory (lorakit or peft).", json_schema_extra={"argument": True}
    )


def summarize(path: str | Path) -> dict:
    """Check the files parse, then report config, modules, ranks and sizes."""
    path = Path(path)
    raw = read_config(path)
    tensors = read_weights(path)
    saved = list(raw.get("modules_to_save") or [])
    modules: dict[str, int] = {}
    for key, tensor in tensors.items():
        parsed = parse_key(key, saved)
        if parsed is not None and parsed.part == "A":
            modules[parsed.module] = int(tensor.shape[0])
    return {
        "path": str(path),
        "peft_type": raw.get("peft_type", "LORA"),
        "task_type": raw.get("task_type"),
        "base_model_name_or_path": raw.get("base_model_name_or_path"),
        "r": raw.get("r"),
        "lora_alpha": raw.get("lora_alpha"),
        "use_rslora": raw.get("use_rslora", False),
        "use_dora": raw.get("use_dora", False),
        "target_modules": raw.get("target_modules"),
        "modules_to_save": saved or None,
        "adapted_modules": len(modules),
        "ranks": sorted(set(modules.values())),
        "parameters": sum(t.numel() for t in tensors.values()),
        "size_bytes": sum(f.stat().st_size for f in path.iterdir() if f.is_file()),
    }
