import json
import struct

import pytest

wandb = pytest.importorskip("wandb")
from wandb.proto.wandb_internal_pb2 import Record

from momentumlab.loggers import MetricLogger, WandbLogger

BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of checksummed chunks
HEADER = 7  # ":W&B" + magic (2 bytes) + version (1 byte)
CHUNK_HEADER = 7  # checksum (4), length (2), type (1: full, 2: first, 3: middle, 4: last)


def read_records(path):
    """Every protobuf Record in an offline run's .wandb file (a reader written from the format)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, offset = [], b"", HEADER
    while offset + CHUNK_HEADER <= len(data):
        room = BLOCK - offset % BLOCK
        if room < CHUNK_HEADER:  # the tail of a block too short for a chunk is padding
            offset += room
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + CHUNK_HEADER])
        pending += data[offset + CHUNK_HEADER : offset + CHUNK_HEADER + length]
        offset += CHUNK_HEADER + length
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def items(entries):
    """{key: value} of history/summary/config items (a key is stored either whole or as its parts)."""
    return {entry.key or ".".join(entry.nested_key): json.loads(entry.value_json) for entry in entries}


def test_offline_wandb_run_holds_the_logged_history(tmp_path, monkeypatch):
    for variable in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):  # keep ~ untouched
        monkeypatch.setenv(variable, str(tmp_path / variable.lower()))
    logger = WandbLogger("momentumlab-test", tmp_path / "wandb", config={"optimizer": {"momentum": 0.9}})
    assert isinstance(logger, MetricLogger)
    logger.log(0, {"loss": 0.693, "buffer_norm": 0.0})
    logger.log(5, {"loss": 0.25, "buffer_norm": 1.5})
    logger.close()
    wandb.teardown()  # W&B's service process writes the run file in the background: wait for it

    assert logger.run_folder.parent == tmp_path / "wandb" / "wandb"
    assert logger.run_folder.name.startswith("offline-run-")
    records = read_records(next(logger.run_folder.glob("run-*.wandb")))
    history = [items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    assert [{k: v for k, v in row.items() if k in ("_step", "loss", "buffer_norm")} for row in history] == [
        {"_step": 0, "loss": 0.693, "buffer_norm": 0.0},
        {"_step": 5, "loss": 0.25, "buffer_norm": 1.5},
    ]
    summary = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            summary |= items(record.summary.update)
    assert (summary["loss"], summary["buffer_norm"], summary["_step"]) == (0.25, 1.5, 5)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.project == "momentumlab-test"
    assert items(run.config.update)["optimizer"] == {"momentum": 0.9}
