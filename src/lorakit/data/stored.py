"""Data in `datasets`' own storage: a `save_to_disk` directory, or a dataset in the local HF
datasets cache (read offline: lorakit never downloads).

Both give train/validation/test parts by split name (valid/val/dev count as validation); a
single split of another name is the training data. The caller splits and deduplicates them.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict
from datasets.exceptions import DatasetsError
from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

from lorakit.data.split import SPLIT_STEMS
from lorakit.errors import DataError
from lorakit.quiet import silenced

# what `save_to_disk` writes: a Dataset's state and info, or a DatasetDict's split list
SAVED_DATASET = ("dataset_info.json", "state.json")
SAVED_DICT = "dataset_dict.json"
# a hub dataset id: `name` or `namespace/name` (huggingface_hub's rule, roughly)
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def is_saved_dataset(path: Path) -> bool:
    """A directory `datasets.load_from_disk` reads (Dataset or DatasetDict)."""
    path = Path(path)
    return (path / SAVED_DICT).is_file() or all((path / f).is_file() for f in SAVED_DATASET)


def read_saved(path: str | Path) -> dict[str, Dataset]:
    """{split: Dataset} of a `save_to_disk` directory."""
    path = Path(path).expanduser()
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise DataError(
            f"could not read {path} as a datasets save_to_disk directory ({reason}) — save it "
            "again with Dataset.save_to_disk, or pass a data file"
        ) from None
    return _parts(loaded, str(path))


def cached_dataset(name: str) -> dict[str, Dataset] | None:
    """{split: Dataset} of `name` from the local HF datasets cache; None when it is not there."""
    # datasets' own builder names ("json", "csv", ...) would read the current directory
    if not HUB_NAME.match(name) or name.lower() in _PACKAGED_DATASETS_MODULES:
        return None
    try:
        with _offline(), silenced("datasets"):
            loaded = datasets.load_dataset(name, download_mode="reuse_dataset_if_exists")
    except (ConnectionError, FileNotFoundError):  # offline: "couldn't reach the Hub" = not cached
        return None
    except (ValueError, RuntimeError, DatasetsError) as exc:  # e.g. several cached configs
        raise DataError(
            f"could not load {name!r} from the local HF datasets cache: "
            f"{str(exc).splitlines()[0][:160]} — save the split you want with "
            "Dataset.save_to_disk and pass that directory"
        ) from None
    return _parts(loaded, name)


def not_found(source: str) -> DataError:
    """The error for a source that is neither a path nor a cached dataset."""
    cache = datasets.config.HF_DATASETS_CACHE
    return DataError(
        f"data {source!r} is not a file, a directory or a dataset in the local HF datasets cache "
        f"({cache}) — check the path, use the default data 'tweets', or fetch the dataset once "
        f"online (datasets.load_dataset({source!r})) so it is cached"
    )


def stored_files(source: str) -> dict[str, Path]:
    """The files a saved directory or a cached dataset is read from, by relative name
    (what fingerprint.json records); {} for anything else."""
    path = Path(source).expanduser()
    if path.is_dir() and is_saved_dataset(path):
        return {str(p.relative_to(path)): p for p in sorted(path.rglob("*")) if p.is_file()}
    if path.exists():
        return {}
    parts = cached_dataset(source) or {}
    files = {Path(f["filename"]) for ds in parts.values() for f in ds.cache_files}
    return {f"{source}/{f.name}": f for f in sorted(files)}


def _parts(loaded: Dataset | DatasetDict, where: str) -> dict[str, Dataset]:
    if isinstance(loaded, Dataset):
        return {"train": loaded}
    parts: dict[str, Dataset] = {}
    for split, ds in loaded.items():
        name = SPLIT_STEMS.get(split.lower())
        if name in parts:
            raise DataError(f"{where} has two {name} splits — keep one of them")
        if name:
            parts[name] = ds
    if not parts and len(loaded) == 1:
        return {"train": next(iter(loaded.values()))}
    if "train" not in parts:
        raise DataError(
            f"{where} has no train split (splits: {', '.join(loaded) or 'none'}) — name the "
            "training split 'train' (and validation / test the others)"
        )
    return parts


@contextlib.contextmanager
def _offline():
    """datasets' offline mode for one call: a name not in the cache fails at once, without
    reaching for the network (datasets reads the flag at call time)."""
    previous = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = previous
