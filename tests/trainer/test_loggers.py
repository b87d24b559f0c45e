"""--log tensorboard / wandb: real writers, read back from their own files."""

import json
import time

import pytest

from grokfast_train.cli import main

TINY = ["--p", "13", "--hidden", "16", "--heads", "2", "--train-size", "40", "--eval-every", "5",
        "--checkpoint-every", "5", "--quiet", "--device", "cpu"]


def scalars(log_dir, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_mirrors_metrics_jsonl_and_survives_a_resume(tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    assert main([*TINY, "--steps", "10", "--out", str(run), "--log", "tensorboard"]) == 0
    assert main([*TINY, "--steps", "20", "--out", str(run), "--resume"]) == 0  # logging carries on
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for tag in ("train_loss", "test_acc", "weight_norm"):
        got = scalars(run / "tensorboard", tag)
        assert [s for s, _ in got] == [r["step"] for r in rows] == [5, 10, 15, 20]
        assert [v for _, v in got] == pytest.approx([r[tag] for r in rows], rel=1e-6)


def wandb_records(path) -> list[bytes]:
    """The records of a W&B run file: a 7-byte ':W&B' header, then LevelDB's log format (32 KiB
    blocks; each record fragment a 7-byte header -- crc, little-endian length, type -- and data)."""
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    records, partial, pos = [], b"", 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:  # FULL
            records.append(chunk)
        elif kind == 2:  # FIRST
            partial = chunk
        elif kind == 3:  # MIDDLE
            partial += chunk
        elif kind == 4:  # LAST
            records.append(partial + chunk)
    return records


def test_wandb_offline_run_has_the_config_and_every_row(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    run = tmp_path / "run"
    assert main([*TINY, "--steps", "10", "--out", str(run), "--log", "wandb"]) == 0
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1  # offline: nobody is logged in
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    def read(path):
        history, config = [], {}
        for data in wandb_records(path):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(data)
            kind = rec.WhichOneof("record_type")
            if kind == "history":
                history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
            elif kind == "run":
                config.update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
        return history, config

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # W&B's own writer process may still be flushing the file's tail when finish() has returned (once in a full
    # CI run its last record read back truncated): read it again for a few seconds before judging
    path, deadline = next(offline[0].glob("*.wandb")), time.monotonic() + 10
    while True:
        try:
            history, config = read(path)
            if len(history) >= len(rows) or time.monotonic() > deadline:
                break
        except DecodeError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)
    assert config["p"] == 13 and config["hidden"] == 16
    assert [h["_step"] for h in history] == [r["step"] for r in rows]
    assert [h["test_acc"] for h in history] == pytest.approx([r["test_acc"] for r in rows])


def test_unknown_logger_is_one_line(tmp_path, capsys):
    assert main([*TINY, "--steps", "5", "--out", str(tmp_path / "r"), "--log", "mlflow"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--log" in err and "tensorboard" in err
