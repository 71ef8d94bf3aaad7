"""The production loop measured on the embedded SmolLM2-135M-Instruct and the dates task.

1. Champion: a LoRA run on examples/dates (ISO dates out of free text).
2. It is served (`build_state` + uvicorn, SQLite traffic log, champion pointer). Simulated users send normal dates
   traffic and a date style the training data never had: Roman-numeral months ("14.VII.1987", day first). They
   correct every wrong answer to a Roman-style question, give a thumbs-up to right answers and a thumbs-down
   (no correction) to wrong normal ones.
3. `monitor` compares the logged inputs with the training data (embedding MMD test, lengths, unseen words).
4. `retrain` round 1: corrections -> SFT rows + replay of the champion's data; the challenger is gated on the
   dates test split (old cases) and held-out corrections (new cases), promoted, and swapped into the running
   server with POST /v1/admin/reload.
5. Round 2: a second batch of Roman-style traffic whose corrections are corrupted (every year off by one, as a
   broken labelling tool would write them). The challenger trained on them is gated against round 1's held-out
   (correct) cases as the gate file, and must be refused; the champion pointer must not move.

Run (quality demo, not a timing): nice -n 10 .venv/bin/python benchmarks/retrain_loop.py > /tmp/retrain_loop.log 2>&1
With --smoke everything is tiny and goes to the system temp folder.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from techniques_common import MODEL, RESULTS, device_note, interval_cell, prompt_and_reference, rows, shared_note, train

ROMAN = ["I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII"]
TEMPLATES = [
    "Convert the date to ISO 8601 (YYYY-MM-DD). Reply with the date only.\n\nRegistered on {d} at the county office.",
    "Give the date below as YYYY-MM-DD and nothing else.\n\nStamp in the passport: {d}",
    "What is the date in this note, in YYYY-MM-DD form only?\n\nReceived {d}, signed by the clerk.",
    "Extract the date and answer with YYYY-MM-DD only.\nText: Meeting minutes of {d} (day.month.year).",
]


def roman_case(rng: random.Random) -> tuple[str, str]:
    """A question in the new style and its ISO answer."""
    year, month, day = rng.randint(1950, 2020), rng.randint(1, 12), rng.randint(1, 28)
    text = f"{day}.{ROMAN[month - 1]}.{year}" if rng.random() < 0.5 else f"{day} {ROMAN[month - 1]} {year}"
    return rng.choice(TEMPLATES).format(d=text), f"{year:04d}-{month:02d}-{day:02d}"


def corrupt(iso: str) -> str:
    """The broken labeller: the right month and day, the year off by one."""
    return f"{int(iso[:4]) + 1:04d}{iso[4:]}"


def post(url: str, path: str, body: dict | None, key: str) -> dict:
    import httpx2 as httpx

    reply = httpx.post(f"{url}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=600)
    if reply.status_code != 200:
        raise RuntimeError(f"{path}: {reply.status_code} {reply.text}")
    return reply.json()


def traffic(url: str, key: str, cases: list[tuple[str, str, str]], corrupted: bool) -> dict[str, int]:
    """Send `cases` (kind, prompt, answer) in parallel batches and give each answer its feedback."""

    def one(case: tuple[str, str, str]) -> str:
        kind, prompt, reference = case
        body = {"model": "champion", "messages": [{"role": "user", "content": prompt}], "max_tokens": 16,
                "temperature": 0}  # fmt: skip
        reply = post(url, "/v1/chat/completions", body, key)
        answer = reply["choices"][0]["message"]["content"].strip()
        if answer == reference and not corrupted:
            post(url, "/v1/feedback", {"response_id": reply["id"], "rating": "up"}, key)
            return "up"
        if kind == "roman":
            fix = corrupt(reference) if corrupted else reference
            post(url, "/v1/feedback", {"response_id": reply["id"], "rating": "down", "correction": fix}, key)
            return "correction"
        post(url, "/v1/feedback", {"response_id": reply["id"], "rating": "down"}, key)
        return "down"

    with ThreadPoolExecutor(8) as pool:
        given = list(pool.map(one, cases))
    return {k: given.count(k) for k in ("up", "down", "correction")}


def wait_logged(db: Path, n: int) -> None:
    from tunelab.recipes.monitor.store import count_requests, open_database

    engine = open_database(db)
    deadline = time.monotonic() + 60
    while count_requests(engine) < n and time.monotonic() < deadline:
        time.sleep(0.2)
    engine.dispose()


def part_summary(part) -> dict:
    from tunelab.eval.stats import bootstrap_ci

    n, a, b = part.n, round(part.champion * part.n), round(part.challenger * part.n)
    ci = [bootstrap_ci([1.0] * k + [0.0] * (n - k)).to_dict() if n else None for k in (a, b)]
    return {"n": n, "champion": ci[0], "challenger": ci[1], "test": part.test, "passed": part.passed,
            "rule": part.rule}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--champion", help="a finished run of the champion's settings to start from (else trained)")
    parser.add_argument("--train-rows", type=int, default=600, help="the champion's training rows (examples/dates)")
    parser.add_argument("--retrain-steps", type=int, default=40)
    parser.add_argument("--retrain-batch", type=int, default=8)
    parser.add_argument("--retrain-lr", type=float, help="the challenger's learning rate (default: the champion's)")
    parser.add_argument("--roman", type=int, default=160, help="new-style requests in round 1")
    parser.add_argument("--normal", type=int, default=40, help="normal dates requests in round 1")
    parser.add_argument("--roman-2", type=int, default=60, help="new-style requests with corrupted corrections")
    parser.add_argument("--probe", type=int, default=24, help="fresh new-style questions after the reload")
    parser.add_argument("--old", type=int, default=120, help="the champion's validation rows = old gate cases")
    parser.add_argument("--old-margin", type=float, default=0.05, help="the gate's non-inferiority margin")
    parser.add_argument("--round-2-only", action="store_true",
                        help="run round 2's retrain and gate again on the folder and log a full run left")  # fmt: skip
    args = parser.parse_args()
    if args.smoke:
        args.train_rows, args.retrain_steps, args.roman, args.normal, args.roman_2, args.old = 32, 2, 12, 4, 10, 8
    work = Path(tempfile.gettempdir()) / ("tunelab-retrain-smoke" if args.smoke else "tunelab-retrain-loop")
    out_dir = work if args.smoke else RESULTS
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import shutil

    import torch
    from rich.console import Console

    from tunelab.recipes.monitor.monitor import monitor, monitor_settings
    from tunelab.recipes.retrain.run import RetrainOptions, retrain
    from tunelab.serve.config import ServeConfig
    from tunelab.serve.server import build_state, serve_in_thread
    from tunelab.serve.traffic import LogSettings

    console = Console(quiet=not args.smoke)
    if args.round_2_only:
        rerun_round_two(work, out_dir, console)
        return
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def mark(phase: str) -> None:
        timings[phase] = round(time.perf_counter() - started - sum(timings.values()), 1)
        print(f"[{time.strftime('%H:%M:%S')}] {phase} done in {timings[phase]} s", flush=True)

    data = work / "dates"
    data.mkdir()
    train_rows, test_rows = rows("train")[: args.train_rows], rows("test")[: args.old]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test_rows))
    if args.champion:  # a finished run of the same settings: copied, its data paths pointed at this copy
        champion_dir = work / "runs" / "champion"
        shutil.copytree(args.champion, champion_dir, ignore=shutil.ignore_patterns("checkpoints"))
        config = champion_dir / "config.yaml"
        text = config.read_text()
        for name in ("train.jsonl", "test.jsonl"):
            old = next(line.split("- ")[1] for line in text.splitlines() if line.strip().endswith(f"/{name}"))
            text = text.replace(old, str(data / name))
        config.write_text(text)
    else:  # examples/dates/config.yaml on the first train_rows / old rows: 1 epoch of batch 16
        overrides = [
            f"data.train={data / 'train.jsonl'}", f"data.validation={data / 'test.jsonl'}", "data.max_length=256",
            "method.name=lora", "method.r=16", "method.alpha=32", "training.batch_size=16", "training.epochs=1",
            "training.learning_rate=1e-3", "training.seed=42", "eval.max_new_tokens=24",
            f"eval.max_examples={args.old}",
        ]  # fmt: skip
        champion_dir = train("champion", work / "runs", overrides)[0].run_dir
    mark("champion ready")

    key, db, pointer = "sk-demo", work / "log.db", work / "runs" / "champion-champion.json"
    config = ServeConfig(api_keys=[key], max_batch_size=16, request_timeout=3600)
    state = build_state(str(champion_dir), config, dtype=torch.bfloat16, log=LogSettings(db=str(db)),
                        champion=pointer, device="cpu")  # fmt: skip
    server = serve_in_thread(state)
    rng = random.Random(0)
    roman = [("roman", *roman_case(rng)) for _ in range(args.roman)]
    normal = [("normal", *prompt_and_reference(r)) for r in rng.sample(rows("train")[args.train_rows :], args.normal)]
    mixed = roman + normal
    rng.shuffle(mixed)
    feedback_1 = traffic(server.url, key, mixed, corrupted=False)
    wait_logged(db, len(mixed))
    mark("round 1 traffic served")

    settings = monitor_settings(None, ["window=86400", "min_requests=20", "max_samples=200"])
    drift = monitor(champion_dir, str(db), settings)
    mark("monitor")
    print(json.dumps({"feedback": feedback_1, "alerts": drift.alerts}), flush=True)

    steps, rule = challenger_settings(args)
    first = retrain(champion_dir, RetrainOptions(db=str(db), out=work / "runs" / "retrain-1", max_old=args.old,
                                                 overrides=steps, champion=pointer, rule=rule), console)  # fmt: skip
    mark("round 1 retrain + gate")
    print(json.dumps({"round_1": first.gate.to_json(), "rows": first.lineage["rows"]}), flush=True)
    reloaded = None
    if first.gate.promoted:
        reloaded = post(server.url, "/v1/admin/reload", None, key)
    probe_rng = random.Random(99)
    probe = [("roman", *roman_case(probe_rng)) for _ in range(args.probe)]

    def ask(case: tuple[str, str, str]) -> bool:
        body = {"model": "champion", "max_tokens": 16, "temperature": 0,
                "messages": [{"role": "user", "content": case[1]}]}  # fmt: skip
        reply = post(server.url, "/v1/chat/completions", body, key)
        return reply["choices"][0]["message"]["content"].strip() == case[2]

    with ThreadPoolExecutor(8) as pool:
        probe_right = sum(pool.map(ask, probe))
    mark("reload + probe")
    print(json.dumps({"reload": reloaded, "probe_right": probe_right, "probe": len(probe)}), flush=True)

    db2 = work / "log2.db"
    server.stop()
    state = build_state(str(champion_dir), config, dtype=torch.bfloat16, log=LogSettings(db=str(db2)),
                        champion=pointer, device="cpu")  # fmt: skip
    server = serve_in_thread(state)
    rng2 = random.Random(2)
    bad_cases = [("roman", *roman_case(rng2)) for _ in range(args.roman_2)]
    feedback_2 = traffic(server.url, key, bad_cases, corrupted=True)
    wait_logged(db2, len(bad_cases))
    server.stop()
    mark("round 2 traffic served")
    parent_2 = first.challenger if first.gate.promoted else champion_dir
    second = round_two(work, args, parent_2, first.folder, console)
    mark("round 2 retrain + gate")

    window = drift.windows[0]
    payload = {
        "args": vars(args), "timings_s": timings, "device": device_note(), "model": MODEL,
        "feedback_round_1": feedback_1, "feedback_round_2": feedback_2,
        "monitor": {"alerts": drift.alerts, "signals": {k: v for k, v in window.signals.items() if k != "feedback"},
                    "feedback": window.signals.get("feedback"), "requests": window.requests},
        "round_1": {"promoted": first.gate.promoted, "reason": first.gate.reason, "rows": first.lineage["rows"],
                    "new": part_summary(first.gate.parts["new"]), "old": part_summary(first.gate.parts["old"]),
                    "reload": reloaded, "probe_after_reload": {"n": len(probe), "right": probe_right}},
        "round_2": second,
    }  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "retrain_loop.json").write_text(json.dumps(payload, indent=2, default=str))
    (out_dir / "retrain_loop.md").write_text(report(payload))
    print((out_dir / "retrain_loop.md").read_text(), flush=True)


def challenger_settings(args: argparse.Namespace):
    """The challenger's run settings (steps, batch, learning rate) and the gate's rule."""
    from tunelab.recipes.retrain.gate import GateRule

    steps = [f"training.max_steps={args.retrain_steps}", f"training.batch_size={args.retrain_batch}"]
    steps += [f"training.learning_rate={args.retrain_lr}"] if args.retrain_lr else []
    return steps, GateRule(old_margin=args.old_margin)


def round_two(work: Path, args: argparse.Namespace, parent: Path, first_folder: Path, console) -> dict:
    """Retrain on the corrupted log (log2.db) from `parent`, gated on round 1's held-out corrections."""
    from tunelab.recipes.retrain.run import RetrainOptions, retrain

    steps, rule = challenger_settings(args)
    pointer = work / "runs" / "champion-champion.json"
    before = pointer.read_text() if pointer.is_file() else None
    second = retrain(parent, RetrainOptions(db=str(work / "log2.db"), out=work / "runs" / "retrain-2",
                                            max_old=args.old, gate_file=first_folder / "data" / "gate_new.jsonl",
                                            overrides=steps, champion=pointer, rule=rule), console)  # fmt: skip
    print(json.dumps({"round_2": second.gate.to_json(), "rows": second.lineage["rows"]}), flush=True)
    return {"promoted": second.gate.promoted, "reason": second.gate.reason, "rows": second.lineage["rows"],
            "new": part_summary(second.gate.parts["new"]), "old": part_summary(second.gate.parts["old"]),
            "pointer_unchanged": before == (pointer.read_text() if pointer.is_file() else None)}  # fmt: skip


def rerun_round_two(work: Path, out_dir: Path, console) -> None:
    """Round 2 again on the champion, round 1 and corrupted log a full run left in `work` (results read back)."""
    import shutil

    payload = json.loads((out_dir / "retrain_loop.json").read_text())
    args = argparse.Namespace(**payload["args"])
    first = work / "runs" / "retrain-1"
    parent = first / "challenger" if payload["round_1"]["promoted"] else work / "runs" / "champion"
    shutil.rmtree(work / "runs" / "retrain-2", ignore_errors=True)
    started = time.perf_counter()
    payload["round_2"] = round_two(work, args, parent, first, console)
    payload["timings_s"]["round 2 retrain + gate"] = round(time.perf_counter() - started, 1)
    payload["round_2_rerun"] = True
    (out_dir / "retrain_loop.json").write_text(json.dumps(payload, indent=2, default=str))
    (out_dir / "retrain_loop.md").write_text(report(payload))
    print((out_dir / "retrain_loop.md").read_text(), flush=True)


def report(p: dict) -> str:
    r1, r2, m = p["round_1"], p["round_2"], p["monitor"]
    s = m["signals"]

    def row(name: str, part: dict) -> str:
        t = part["test"]
        return (f"| {name} | {part['n']} | {interval_cell(part['champion'])} | {interval_cell(part['challenger'])} | "
                f"{100 * t['difference']:+.1f} pp [{100 * t['low']:+.1f}, {100 * t['high']:+.1f}] | "
                f"{t['p_value']:.2g} | {'yes' if part['passed'] else 'no'} |")  # fmt: skip

    head = ["| gate part | n | champion exact [95% CI] | challenger exact [95% CI] | difference [95% CI] | "
            "McNemar p | passes |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    a = p["args"]
    total = sum(p["timings_s"].values())
    served_2 = "round 1's challenger" if r1["promoted"] else "the same champion: round 1 was refused"
    copied = "; here a copy of such a run, `--champion`" if a["champion"] else ""
    lr = f" at learning rate {a['retrain_lr']:g}" if a["retrain_lr"] else ""
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in a.items() if v not in (None, False))

    def num(name: str) -> float:
        value = s.get(name)
        return float("nan") if value is None else float(value)

    lines = [
        "# The production loop on the dates model: drift, feedback, retrain, gate, promote", "",
        f"Command: `nice -n 10 .venv/bin/python benchmarks/retrain_loop.py {flags}` (whole run {total:.0f} s; phases: "
        f"{', '.join(f'{k} {v:.0f} s' for k, v in p['timings_s'].items())}).", "",
        "Champion: SmolLM2-135M-Instruct (embedded), LoRA r16/α32, examples/dates/config.yaml's settings on the "
        f"first {a['train_rows']} training rows and the first {a['old']} test rows as validation (1 epoch of batch "
        f"16, {-(-a['train_rows'] // 16)} steps{copied}). Served with `build_state` + uvicorn, a SQLite "
        "traffic log and a champion pointer. "
        f"Round 1 traffic: {a['roman']} questions with Roman-numeral months (\"14.VII.1987\", a style absent from "
        f"the training data) and {a['normal']} normal dates questions, greedy, 16 tokens at most. Simulated users: a "
        "thumbs-up for a right answer; a wrong Roman-style answer gets the right date as a correction; a wrong "
        "normal answer gets a thumbs-down only (review queue). "
        f"Feedback given: {r1_feedback(p)}.", "",
        "## Drift", "",
        f"`monitor` (one window of {m['requests']} requests against the champion's training data): embedding MMD "
        f"{num('embedding_mmd'):.4g}, p = {num('embedding_p'):.3g}; input length KS p = "
        f"{num('input_length_p'):.3g}; unseen-word rate {num('unseen_rate'):.3f}; "
        f"thumbs-down rate {s.get('thumbs_down_rate') or 0:.2f}.", "",
        "Alerts:" if m["alerts"] else "No alert was raised.", *[f"- `{x}`" for x in m["alerts"]], "",
        "## Round 1: correct feedback", "",
        f"Next dataset: {r1['rows']['corrections']} corrections -> {r1['rows']['sft_rows']} SFT rows + "
        f"{r1['rows']['replay']} replayed rows of the champion's training data; {r1['rows']['gate_new_rows']} "
        f"corrections held out as new gate cases; {r1['rows']['review_queue']} thumbs-down in the review queue. "
        f"Challenger: {a['retrain_steps']} steps of batch {a['retrain_batch']}{lr} from the champion's adapter. Old "
        f"gate cases: the first {a['old']} rows of the dates test split (the champion's validation rows).", "",
        *head,
        row("new (held-out Roman-style)", r1["new"]),
        row("old (dates test split)", r1["old"]), "",
        f"Decision: **{'PROMOTED' if r1['promoted'] else 'REFUSED'}**: {r1['reason']}.", "",
    ]  # fmt: skip
    if r1["reload"]:
        probe = r1["probe_after_reload"]
        lines += [f"The running server swapped the adapter in on POST /v1/admin/reload; afterwards it answered "
                  f"{probe['right']}/{probe['n']} fresh Roman-style questions right (not in any training or gate "
                  "set).", ""]  # fmt: skip
    lines += [
        "## Round 2: corrupted feedback", "",
        f"{a['roman_2']} more Roman-style questions to the served champion ({served_2}); every correction has the "
        "year off by one "
        f"({r2['rows']['corrections']} corrections, all trained on). Gate new cases: round 1's held-out corrections "
        "(correct, as a gate file).", "", *head, row("new (round 1 held-out, correct)", r2["new"]),
        row("old (the gate set round 1 passed)" if r1["promoted"] else "old (dates test split)", r2["old"]), "",
        f"Decision: **{'PROMOTED' if r2['promoted'] else 'REFUSED'}**: {r2['reason']}. Champion pointer "
        f"{'unchanged' if r2['pointer_unchanged'] else 'CHANGED'}.", "",
        *(["Round 2's retrain and gate were run again (`--round-2-only`, same folder, same logged traffic) after a "
           "fix: a challenger's old gate cases are the whole gate set it passed (round 1's new cases, then its old "
           "ones), where the first pass had used its validation split (round 1's new cases only).", ""]
          if p.get("round_2_rerun") else []),
        reading(r1, r2), "",
        "Gate rule: new cases must improve with McNemar p < 0.05; old cases are non-inferior when the lower 95% "
        f"bound of the difference (Wald, paired) is above {-100 * a['old_margin']:+g} pp (`--old-margin "
        f"{a['old_margin']:g}`).", "",
        f"Device: {p['device']}. {shared_note()}", "",
    ]  # fmt: skip
    return "\n".join(lines)


def reading(r1: dict, r2: dict) -> str:
    """One paragraph on what the two rounds show."""

    def moved(part: dict) -> str:
        t = part["test"]
        return (
            f"{100 * part['champion']['estimate']:.1f}% -> {100 * part['challenger']['estimate']:.1f}% "
            f"({100 * t['difference']:+.1f} pp [{100 * t['low']:+.1f}, {100 * t['high']:+.1f}])"
        )

    first = "promoted" if r1["promoted"] else "refused"
    second = "refused" if not r2["promoted"] else "promoted (the gate failed to stop it)"
    return (
        f"Reading: with correct feedback the challenger was {first}: held-out new-style cases {moved(r1['new'])}, "
        f"old cases {moved(r1['old'])}. Trained on corrupted corrections, the next challenger was {second}: "
        f"round 1's held-out cases {moved(r2['new'])}, old cases {moved(r2['old'])}."
    )


def r1_feedback(p: dict) -> str:
    f = p["feedback_round_1"]
    return f"{f['up']} thumbs-up, {f['correction']} corrections, {f['down']} thumbs-down"


if __name__ == "__main__":
    main()
