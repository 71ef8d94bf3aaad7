"""`tunelab retrain RUN --log DB`: the next dataset from the traffic log, a challenger trained from RUN, the gate,
and promotion only if the challenger passes it.

The retrain folder (`--out`, default `<root>-retrain-<k>` beside the family's first run) holds `data/` (the SFT mix
with replay, preference pairs, the review queue, both gate parts), `challenger/` (a normal run folder: serve it,
evaluate it, retrain from it), and `gate.json`, `gate.md`, `lineage.json`. Replay is the continual-learning
reservoir (`recipes.continual.replay`): a uniform sample of RUN's own training rows spread through the corrections,
so the challenger keeps RUN's skills. The challenger continues RUN's trained result: a LoRA run's adapter is the
start of the new adapter (`method.start_from`, same base model, so a server can swap it in), a whole-model run's
weights are the new run's model. Preference pairs, when the log holds any, train a second stage (DPO or KTO)
from the SFT challenger with a frozen copy of it as the reference.

Promotion writes the family's champion pointer (`<root>-champion.json`), which `tunelab serve --champion FILE`
reloads on `POST /v1/admin/reload` without a restart. A refused challenger changes nothing that is served.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console

from tunelab.config import TunelabConfig, load_config
from tunelab.core.device import use_bf16
from tunelab.core.errors import ConfigError, DataError
from tunelab.core.files import write_text
from tunelab.core.types import Message
from tunelab.data.load import LoadOptions, load_examples
from tunelab.data.pipeline import prepare_dataset
from tunelab.data.records import Example
from tunelab.methods.trained import artifact_dir, load_trained, read_run
from tunelab.models.generate import generate_answers
from tunelab.models.load import load_tokenizer, resolve_source
from tunelab.recipes.continual.replay import ReservoirBuffer, mix_replay
from tunelab.recipes.monitor.store import read_log, safe_url
from tunelab.recipes.retrain.dataset import NextData, Row, build_next_data
from tunelab.recipes.retrain.gate import GateCase, GateResult, GateRule, gate_markdown, judge
from tunelab.recipes.retrain.promote import LINEAGE, champion_file, promote, root_of
from tunelab.recipes.run import run_training
from tunelab.recipes.runs import run_config


@dataclass
class RetrainOptions:
    """What `tunelab retrain` does besides RUN and the log (each field is one flag)."""

    db: str
    out: Path | None = None
    gate_file: Path | None = None
    """Gate new cases from this chat file instead of a held-out share of the corrections."""
    min_feedback: int = 8
    """Least corrections + preference pairs to train on."""
    gate_fraction: float = 0.3
    replay_fraction: float = 0.5
    """Share of the SFT mix drawn from RUN's training rows."""
    replay_capacity: int = 2000
    pairs: Literal["dpo", "kto", "off"] = "dpo"
    max_old: int | None = None
    """Most old gate cases (default: RUN's eval.max_examples)."""
    rule: GateRule = field(default_factory=GateRule)
    overrides: list[str] = field(default_factory=list)
    """`key=value` settings of the challenger's run config (training.max_steps=40, ...)."""
    champion: Path | None = None
    promote: bool = True
    seed: int = 0


@dataclass
class RetrainResult:
    folder: Path
    challenger: Path
    gate: GateResult
    lineage: dict[str, Any]
    champion_file: Path | None
    """The pointer written when the challenger was promoted (None when refused or --no-promote)."""


def retrain(run_dir: Path, options: RetrainOptions, console: Console | None = None) -> RetrainResult:
    """The whole loop for one round; raises DataError/ConfigError (nothing trained, nothing promoted) on a log
    that cannot be read, too little feedback or a missing gate set."""
    console = console or Console()
    parent = read_run(run_dir)
    cfg = run_config(run_dir)
    next_data = build_next_data(read_log(options.db), options.gate_fraction, options.seed, options.gate_file is None)
    new_cases = _new_cases(next_data, options.gate_file)
    _check_enough(next_data, options, new_cases)
    folder = options.out or next_folder(root_of(run_dir))
    data_dir = folder / "data"
    _print_counts(console, next_data)
    prepared = prepare_dataset(cfg.data, load_tokenizer(resolve_source(cfg.model.source)), cfg.training.seed,
                               data_dir / "parent_report")  # fmt: skip
    train_rows = _records(prepared.table("train_records").to_pylist())
    old_rows = earlier_gate(run_dir) or _records(prepared.table("validation_records").to_pylist())
    old_rows = old_rows[: options.max_old or cfg.eval.max_examples or None]  # the old cases the gate scores
    replay = ReservoirBuffer[Row](options.replay_capacity, options.seed)
    replay.extend(_chat_row(e) for e in train_rows)
    mix = mix_replay(next_data.sft, replay.items, options.replay_fraction, options.seed)
    files = _write_data(data_dir, next_data, mix, new_cases, old_rows)
    challenger = _train_challenger(cfg, run_dir, parent.method, folder, files, next_data, options, console)
    old_cases = [_case(e, "old") for e in old_rows]
    cases = [*(_case(e, "new") for e in new_cases), *old_cases]
    result = gate(run_dir, challenger, cases, options.rule, cfg, console)
    lineage = {
        "parent": str(run_dir.resolve()), "root": str(root_of(run_dir).resolve()), "challenger": str(challenger),
        "folder": str(folder.resolve()),
        "log": safe_url(options.db if "://" in options.db else str(Path(options.db).resolve())),
        "created": time.time(), "rows": {**next_data.counts, "replay": len(mix) - len(next_data.sft),
        "sft_mix": len(mix), "gate_new": len(new_cases), "gate_old": len(old_cases)},
        "gate_file": str(options.gate_file) if options.gate_file else None, "gate": result.to_json(),
    }  # fmt: skip
    pointer = None
    if result.promoted and options.promote:
        pointer = promote(options.champion or champion_file(run_dir), challenger, run_dir, folder / "gate.json")
        lineage["champion_file"] = str(pointer)
    _write_results(folder, challenger, result, lineage, run_dir)
    return RetrainResult(folder, challenger, result, lineage, pointer)


def earlier_gate(run_dir: Path) -> list[Example] | None:
    """For a challenger promoted by an earlier round, that round's whole gate set (its new cases first, then its
    old ones), which is what the next challenger must not lose: its own validation split holds only the new cases
    it trained beside. None for a run no retrain produced (its validation split is the old cases)."""
    lineage = run_dir / LINEAGE
    if not lineage.is_file():
        return None
    made = json.loads(lineage.read_text())
    data = Path(made.get("folder") or Path(made["challenger"]).parent) / "data"
    files = [data / "gate_new.jsonl", data / "gate_old.jsonl"]
    if not all(f.is_file() for f in files):
        return None
    rows = [json.loads(line) for f in files for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    return _records(rows, f"the gate set of {data.parent}")


def next_folder(root: Path) -> Path:
    """`<root>-retrain-<k>` beside the family's first run, k the first number not taken."""
    k = 1
    while (root.parent / f"{root.name}-retrain-{k}").exists():
        k += 1
    return root.parent / f"{root.name}-retrain-{k}"


def _new_cases(next_data: NextData, gate_file: Path | None) -> list[Example]:
    if gate_file is None:
        return [Example.from_row({"messages": r["messages"]}) for r in next_data.gate_new]
    if not gate_file.is_file():
        raise DataError(f"--gate '{gate_file}' does not exist. Give a chat JSONL file of prompts with their answers.")
    loaded = load_examples([gate_file], options=LoadOptions())
    if loaded.rejects:
        bad = loaded.rejects[0]
        raise DataError(
            f"--gate '{gate_file}': {len(loaded.rejects)} rows cannot be read, e.g. {bad.origin}: {bad.reason}. "
            "Fix them; gate cases are chat rows ending with the expected answer."
        )
    return _records([e.to_row() for e in loaded.examples], str(gate_file))


def _check_enough(next_data: NextData, options: RetrainOptions, new_cases: list[Example]) -> None:
    c = next_data.counts
    if next_data.trainable < options.min_feedback:
        raise DataError(
            f"Too little feedback to retrain on in '{options.db}': {len(next_data.sft)} corrections to train on "
            f"(of {c['corrections']}; {c['gate_new_rows']} held out for the gate) and {c['pairs']} choices between "
            f"answers, {next_data.trainable} in all; at least {options.min_feedback} are needed (--min-feedback). "
            f"Collect {options.min_feedback - next_data.trainable} more corrections or choices (POST /v1/feedback); "
            f"{c['review_queue']} rows wait in the review queue (thumbs-down without a correction) and do not count."
        )
    if not new_cases:
        raise DataError(
            f"The gate set has no new cases: the log's {c['corrections']} corrections leave none to hold out "
            f"(--gate-fraction {options.gate_fraction:g}). Give a gate file of new cases with --gate FILE, or "
            "collect more corrections."
        )


def _records(rows: list[dict[str, Any]], where: str = "the run's data") -> list[Example]:
    """Chat records that end with an answer (the only rows the gate can score and replay can mix)."""
    out = [Example.from_row(r) for r in rows]
    chat = [e for e in out if e.kind == "chat" and any(m.role == "assistant" for m in e.messages)]
    if len(chat) != len(out):
        raise ConfigError(
            f"retrain works on chat data; {where} holds {len(out) - len(chat)} rows of other kinds "
            f"({sorted({e.kind for e in out if e not in chat})}). Retrain chat (SFT) runs."
        )
    return chat


def _chat_row(example: Example) -> Row:
    return {"messages": [{"role": m.role, "content": m.content} for m in example.messages]}


def _case(example: Example, part: str) -> GateCase:
    prompt, answer = example.prompt_and_answer()
    return GateCase(prompt, answer, part)


def _write_data(folder: Path, next_data: NextData, mix: list[Row], new: list[Example], old: list[Example]) -> dict:
    files = {"sft": folder / "sft_mix.jsonl", "pairs": folder / "pairs.jsonl", "review": folder / "review_queue.jsonl",
             "gate_new": folder / "gate_new.jsonl", "gate_old": folder / "gate_old.jsonl"}  # fmt: skip
    contents = {"sft": mix, "pairs": next_data.pairs, "review": next_data.review,
                "gate_new": [_chat_row(e) for e in new], "gate_old": [_chat_row(e) for e in old]}  # fmt: skip
    for key, rows in contents.items():
        write_text(files[key], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return files


def _train_challenger(
    cfg: TunelabConfig, run_dir: Path, method: str, folder: Path, files: dict, next_data: NextData,
    options: RetrainOptions, console: Console,
) -> Path:  # fmt: skip
    """Train the SFT challenger (and the preference stage after it); returns the last stage's run folder."""
    start = _start_from(run_dir, method)
    sft = challenger_config(cfg, start, folder, "challenger", ["objective.name=sft", f"data.train={files['sft']}",
                            f"data.validation={files['gate_new']}", *options.overrides])  # fmt: skip
    console.rule(f"challenger: SFT on {len(next_data.sft)} corrections + replay, from {run_dir}")
    last = run_training(sft, console=console).run_dir
    if next_data.pairs and options.pairs != "off":
        console.rule(f"challenger: {options.pairs.upper()} on {len(next_data.pairs)} preference pairs")
        pref = challenger_config(sft, _start_from(last, method), folder, f"challenger-{options.pairs}", [
            f"objective.name={options.pairs}", "objective.reference=copy", f"data.train={files['pairs']}",
            "data.validation=[]", "data.val_fraction=0.0", *options.overrides])  # fmt: skip
        last = run_training(pref, console=console).run_dir
    return last


def _start_from(run_dir: Path, method: str) -> dict[str, str]:
    """The settings that make a new run continue `run_dir`'s trained result."""
    saved = artifact_dir(run_dir, method)
    if not saved.is_dir():
        raise DataError(f"'{run_dir}' has no trained result in '{saved}' to retrain from; finish (resume) it first.")
    if method == "lora":
        return {"method.start_from": str(saved.resolve())}
    if saved.name == "model":
        return {"model.source": str(saved.resolve())}
    raise ConfigError(
        f"retrain continues a LoRA adapter or a whole trained model; '{run_dir}' trained a {method} adapter, which "
        "cannot be continued. Retrain from a lora or full run."
    )


def challenger_config(
    cfg: TunelabConfig, start: dict[str, str], folder: Path, name: str, overrides: list[str]
) -> TunelabConfig:
    """`cfg` as a new run in `folder/name` starting from `start`, with `overrides` (later ones win)."""
    base = cfg.model_dump(mode="json")
    for key, value in start.items():
        section, attr = key.split(".")
        base[section][attr] = value
    settings = ["eval.baseline=false", "eval.generate=false", f"output.dir={folder}", f"output.name={name}",
                "output.overwrite=true", *overrides]  # fmt: skip
    return load_config(None, settings, base=base)


def gate(
    champion: Path, challenger: Path, cases: list[GateCase], rule: GateRule, cfg: TunelabConfig, console: Console
) -> GateResult:
    """Both models' greedy answers to the gate set, and the gate's decision on them."""
    answers = []
    for which, spec in (("champion", champion), ("challenger", challenger)):
        console.print(f"gate: {which} answers {len(cases)} cases ({spec})", highlight=False)
        answers.append(answer_all(spec, [c.prompt for c in cases], cfg))
    return judge(cases, answers[0], answers[1], rule)


def answer_all(spec: Path, prompts: list[list[Message]], cfg: TunelabConfig) -> list[str]:
    """Greedy answers of a run's trained model, with the run's eval settings (length, batch, system prompt)."""
    model, tokenizer = load_trained(str(spec))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = use_bf16(cfg.training.precision, device)
    try:
        return generate_answers(
            model.to(device), tokenizer, prompts, max_new_tokens=cfg.eval.max_new_tokens or 128,
            batch_size=cfg.eval.batch_size, system_prompt=cfg.data.system_prompt,
            precision="bf16" if bf16 else "fp32",
        )  # fmt: skip
    finally:
        del model


def _write_results(folder: Path, challenger: Path, result: GateResult, lineage: dict, champion: Path) -> None:
    write_text(folder / "gate.json", json.dumps(result.to_json(), indent=2))
    write_text(folder / "gate.md", gate_markdown(result, str(champion), str(challenger)))
    write_text(
        folder / "gate_answers.jsonl", "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in result.examples)
    )
    for where in (folder, challenger):
        write_text(where / LINEAGE, json.dumps(lineage, indent=2))


def _print_counts(console: Console, d: NextData) -> None:
    c = d.counts
    console.print(
        f"log: {c['requests']} requests, {c['feedback']} feedback ({c['thumbs_up']} up, {c['thumbs_down']} down), "
        f"{c['preferences']} choices -> {c['sft_rows']} SFT rows, {c['gate_new_rows']} held out for the gate, "
        f"{c['pairs']} pairs, {c['review_queue']} to review", highlight=False,
    )  # fmt: skip
