"""How a prepared dataset is stored: Arrow stream files inside Hugging Face `datasets` folders (one per split, for
the tokenized sequences and for the canonical records), read back memory-mapped or batch by batch."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tunelab.data.ingest import SCHEMA, Ingested
from tunelab.data.tokenize import Tokenized

TOKENIZED = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("origin", pa.string()),
        ("task", pa.string()),
        ("label", pa.string()),
        ("kind", pa.string()),
        ("length", pa.int32()),
        ("truncated", pa.bool_()),
        ("synthetic", pa.bool_()),
        ("difficulty", pa.float64()),
    ]
)
SPLITS = ("train", "validation")


@dataclass
class PreparedDataset:
    """A prepared dataset on disk: `folder/{train,validation}` (tokenized) and `folder/{split}_records`
    (canonical records, all kinds), each a `datasets.load_from_disk` folder."""

    folder: Path
    report: dict[str, Any]

    def load(self, name: str) -> Any:
        """One of the saved `datasets.Dataset`s: train, validation, train_records, validation_records."""
        import datasets

        if not data_files(self.folder / name):  # `datasets` saves an empty split without files, then cannot load it
            return datasets.Dataset(self.table(name))
        return datasets.load_from_disk(str(self.folder / name))

    def table(self, name: str) -> pa.Table:
        """The same as a memory-mapped Arrow table (faster to read row by row)."""
        return read_saved(self.folder / name, TOKENIZED if name in SPLITS else SCHEMA)


def read_saved(folder: Path, schema: pa.Schema) -> pa.Table:
    """A table saved with `Dataset.save_to_disk`, memory-mapped (an empty one when the split is empty)."""
    tables = []
    for name in data_files(folder):
        with pa.memory_map(str(folder / name)) as source:
            tables.append(pa.ipc.open_stream(source).read_all())
    return pa.concat_tables(tables) if tables else schema.empty_table()


def data_files(folder: Path) -> list[str]:
    """The Arrow files of a saved `datasets` folder, in order."""
    state = json.loads((folder / "state.json").read_text())
    return [f["filename"] for f in state.get("_data_files", [])]


def tokenized_items(table: pa.Table) -> list[Tokenized]:
    out = []
    for batch in table.to_batches():
        cols = batch.to_pydict()
        for i in range(batch.num_rows):
            out.append(
                Tokenized(
                    cols["input_ids"][i],
                    cols["labels"][i],
                    cols["origin"][i],
                    cols["task"][i],
                    cols["label"][i],
                    truncated=cols["truncated"][i],
                    difficulty=cols["difficulty"][i],
                )
            )
    return out


def selected_rows(ing: Ingested, idx: np.ndarray, size: int = 2000) -> Iterator[pa.Table]:
    """The rows `idx` (ascending) of an ingest's records, streamed from the file in order rather than taken
    from a memory map, so that the pages read do not stay resident in this process."""
    if not ing.count or not len(idx):
        return
    wanted = np.zeros(ing.count, dtype=bool)
    wanted[idx] = True
    offset = 0
    pending: list[pa.Table] = []
    with pa.OSFile(str(ing.records_path)) as source:
        for batch in pa.ipc.open_stream(source):
            mask = wanted[offset : offset + batch.num_rows]
            offset += batch.num_rows
            if mask.any():
                pending.append(pa.Table.from_batches([batch.filter(pa.array(mask))]))
            if sum(t.num_rows for t in pending) >= size:
                yield pa.concat_tables(pending)
                pending = []
    if pending:
        yield pa.concat_tables(pending)


def save_as_dataset(stream_file: Path, folder: Path, schema: pa.Schema) -> None:
    """Turn an Arrow stream file into a `datasets.load_from_disk` folder by moving it in, not copying it
    (`Dataset.save_to_disk` would read the whole file through a memory map and write it again)."""
    import datasets

    datasets.disable_progress_bars()
    datasets.Dataset(schema.empty_table()).save_to_disk(str(folder))  # writes dataset_info.json and state.json
    name = "data-00000-of-00001.arrow"
    os.replace(stream_file, folder / name)
    state = json.loads((folder / "state.json").read_text())
    state["_data_files"] = [{"filename": name}]
    (folder / "state.json").write_text(json.dumps(state, indent=2))
