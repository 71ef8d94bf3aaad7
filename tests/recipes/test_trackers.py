"""`output.report_to`: a tiny run logs to TensorBoard, MLflow (SQLite store), W&B (offline) and trackio at once;
each is read back with the tool's own reader and compared with metrics.jsonl, eval.json and the config. A tracker
that is not installed or cannot be reached stops the run before anything trains."""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import pytest

import tunelab.recipes.run as train_run
from tests.helpers import AfterStep, tiny_config
from tunelab.cli.main import main
from tunelab.core.errors import ConfigError
from tunelab.recipes.run import run_training
from tunelab.recipes.track import flatten_config, mlflow_uri, numbers

RUN = ["training.max_steps=6", "training.log_every=1", "training.eval_every=3", "eval.max_examples=4",
       "training.num_threads=1"]  # fmt: skip


@pytest.fixture
def tracker_homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where W&B keeps its settings and caches, inside the test's folder. trackio reads TRACKIO_DIR once, when it
    is first imported: set for the whole session at the first use, so no test writes to the user's home."""
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    if "trackio" not in sys.modules:
        os.environ.setdefault("TRACKIO_DIR", str(tmp_path.parent / "trackio"))


def expected_series(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every metric of metrics.jsonl as (step, value) pairs, the way the trackers were given them."""
    series: dict[str, list[tuple[int, float]]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        for key, value in numbers(row, exclude=("step",)).items():
            series.setdefault(key, []).append((row["step"], value))
    return series


def wandb_history(run_file: Path) -> dict[str, list[tuple[int, float]]]:
    """The history records of an offline `.wandb` file, decoded with W&B's own Record protobuf. The file is a
    LevelDB-style log (wandb 0.31 ships no Python reader for it): a 7-byte header, then 32 KiB blocks of chunks,
    each with a 7-byte header (checksum, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block = run_file.read_bytes(), 32768
    assert data[:4] == b":W&B"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little left in this block for a header: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += block - pos % block
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pending)
            records.append(record)
    series: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        if record.WhichOneof("record_type") != "history":
            continue
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            value = json.loads(item.value_json)
            if isinstance(value, int | float) and not key.startswith("_"):
                series.setdefault(key, []).append((record.history.step.num, float(value)))
    return series


def one_per_step(series: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    """W&B merges the logs of one step into one history row: the last value of each step is kept."""
    return {key: sorted(dict(points).items()) for key, points in series.items()}


def assert_same(got: dict[str, list[tuple[int, float]]], want: dict[str, list[tuple[int, float]]], who: str) -> None:
    for key, points in want.items():
        assert [s for s, _ in got.get(key, [])] == [s for s, _ in points], f"{who}: steps of {key}"
        assert [v for _, v in got[key]] == pytest.approx([v for _, v in points], rel=1e-6), f"{who}: {key}"


def test_every_tracker_reads_back_what_the_run_wrote(tmp_path: Path, tiny_model_dir: Path, tracker_homes) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from trackio.sqlite_storage import SQLiteStorage

    name = f"tracked-{tmp_path.name}"
    cfg = tiny_config(tmp_path, tiny_model_dir, *RUN, "output.report_to=[tensorboard,mlflow,wandb,trackio]",
                      name=name)  # fmt: skip
    run_dir = run_training(cfg).run_dir
    want = expected_series(run_dir)
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "peak_mem_mb", "val_loss"} <= want.keys()
    assert [s for s, _ in want["val_loss"]] == [3, 6]  # the evaluation at step 3 and the final one
    final = json.loads((run_dir / "eval.json").read_text())
    evals = {f"eval/{k}": [(6, v)] for k, v in numbers(final, exclude=("steps",)).items()}
    assert "eval/exact_match" in evals

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tensorboard = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert_same(tensorboard, {**want, **evals}, "tensorboard")
    assert "data_report/text_summary" in events.Tags()["tensors"]  # the data report as text

    client = MlflowClient(mlflow_uri(cfg.output))
    (run,) = client.search_runs([client.get_experiment_by_name("tunelab").experiment_id],
                                f"attributes.run_name = '{name}'")  # fmt: skip
    history = {key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
               for key in run.data.metrics}  # fmt: skip
    assert_same(history, {**want, **evals}, "mlflow")
    assert run.info.status == "FINISHED"
    assert history["data/train_examples"] == [(0, 144.0)]
    params = dict(flatten_config(cfg.model_dump(mode="json")))
    assert run.data.params["training.learning_rate"] == str(params["training.learning_rate"]) == "0.003"
    assert run.data.params["output.report_to"] == json.dumps(["tensorboard", "mlflow", "wandb", "trackio"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"adapter", "eval.json", "eval_baseline.json", "data_report.json", "diagnosis.json"} <= artifacts
    adapter = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json"} <= adapter

    (run_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    assert_same(wandb_history(run_file), one_per_step({**want, **evals}), "wandb")
    assert (run_file.parent / "files" / "eval.json").read_text() == (run_dir / "eval.json").read_text()

    logs = SQLiteStorage.get_logs("tunelab", name)
    trackio = {key: [(row["step"], row[key]) for row in logs if key in row] for key in want}
    assert_same(trackio, want, "trackio")


def test_a_missing_tracker_stops_the_run_before_training(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # an import of wandb now fails as if it were not installed
    cfg = tiny_config(tmp_path, tiny_model_dir, *RUN, "output.report_to=[tensorboard,wandb]", name="missing")
    with pytest.raises(ConfigError, match=r"'wandb'.*pip install wandb"):
        run_training(cfg)
    assert not (tmp_path / "runs" / "missing" / "metrics.jsonl").exists()


def test_an_unreachable_mlflow_server_is_exit_2_before_training(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    tiny_config(tmp_path, tiny_model_dir, name="unreachable")  # writes the data file
    config.write_text(
        f"data: {{train: {tmp_path / 'color.jsonl'}}}\nmodel: {{source: {tiny_model_dir}}}\n"
        f"output: {{dir: {tmp_path / 'runs'}, name: unreachable, report_to: [mlflow],"
        " mlflow_tracking_uri: 'http://127.0.0.1:9'}\ntraining: {max_steps: 2, num_threads: 1}\n"
    )
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "could not start the MLflow store 'http://127.0.0.1:9'" in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "unreachable" / "metrics.jsonl").exists()


def test_a_resumed_run_continues_the_same_mlflow_run_and_tensorboard_drops_the_rewritten_steps(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(tmp_path, tiny_model_dir, "training.max_steps=6", "training.log_every=1", "training.save_every=2",
                      "eval.generate=false", "eval.baseline=false", "training.num_threads=1",
                      "output.report_to=[tensorboard,mlflow]", name="resumed")  # fmt: skip
    real_fit = train_run.fit

    def interrupted(*args, **kwargs):  # stopped after step 3: its line is logged, the checkpoint is step 2
        def stop(step: int) -> None:
            if step == 3:
                raise KeyboardInterrupt

        return real_fit(*args, **{**kwargs, "hooks": [*kwargs.get("hooks", ()), AfterStep(stop)]})

    monkeypatch.setattr(train_run, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg)
    client = MlflowClient(mlflow_uri(cfg.output))
    (killed,) = client.search_runs([client.get_experiment_by_name("tunelab").experiment_id])
    assert killed.info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(killed.info.run_id, "loss")] == [1, 2, 3]

    monkeypatch.setattr(train_run, "fit", real_fit)
    run_dir = run_training(cfg, resume=True).run_dir
    want = expected_series(run_dir)
    assert [s for s, _ in want["loss"]] == [1, 2, 3, 4, 5, 6]

    (run,) = client.search_runs([client.get_experiment_by_name("tunelab").experiment_id])
    assert run.info.run_id == killed.info.run_id == json.loads((run_dir / "trackers.json").read_text())["mlflow_run_id"]
    assert run.info.status == "FINISHED"
    # MLflow keeps every value it was sent: step 3 twice, the same loss both times (the resume is exact).
    history = sorted({(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")})
    assert_same({"loss": history}, {"loss": want["loss"]}, "mlflow")

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()  # purge_step hides the first process's step 3: each step once
    assert_same({"loss": [(e.step, e.value) for e in events.Scalars("loss")]}, {"loss": want["loss"]}, "tensorboard")
