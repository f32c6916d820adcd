"""The names of a data folder's split files (`NAME.jsonl`), apart so that the command line can list them cheaply."""

from pathlib import Path

SPLITS = ("train", "dev", "test")  # single commands
FOLLOWUP_SPLITS = {"dev": "followup-dev", "test": "followup-test"}  # training follow-ups join train
COMPOUND_SPLITS = {"dev": "compound-dev", "test": "compound-test"}
RECORD_SPLITS = (*SPLITS, *FOLLOWUP_SPLITS.values())  # of `Record`s, scored call by call
ALL_SPLITS = (*RECORD_SPLITS, *COMPOUND_SPLITS.values())


def split_file(data_dir: Path, split: str) -> Path:
    """The file of a data folder's split."""
    return data_dir / f"{split}.jsonl"
