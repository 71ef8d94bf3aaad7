"""Write benchmarks/results/techniques.md from the demos' results (benchmarks/results/techniques_<demo>.json).

.venv/bin/python benchmarks/techniques_report.py
"""

from __future__ import annotations

import json

from techniques_common import RESULTS

OUT = RESULTS / "techniques.md"


def _load(demo: str) -> dict | None:
    path = RESULTS / f"techniques_{demo}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x:.1%}"


def alignment(r: dict) -> list[str]:
    a, res = r["args"], r["results"]
    lines = [
        "## Preference alignment: DPO and GRPO",
        "",
        f"Command: `.venv/bin/python benchmarks/techniques_alignment.py --steps {a['steps']} --pairs {a['pairs']} "
        f"--eval {a['eval']}`. LoRA r 16, {a['steps']} steps each (DPO: 8 pairs per step, β 0.1; GRPO: 4 prompts x 4 "
        "samples per step, β 0.04), from the base model. Reward of an answer: ISO format (1) + exact date (1); "
        f"held-out: the first {a['eval']} test prompts, greedy. Win rate: share of prompts whose answer's reward is "
        "higher than the base model's answer's (loss rate: lower).",
        "",
        "| model | mean reward | exact match | ISO format | win rate vs base | loss rate | train s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in res.items():
        train_s = f"{row['train_s']:.0f}" if row.get("train_s") else ""
        lines.append(
            f"| {name} | {row['mean_reward']:.2f} | {_pct(row['exact_match'])} | {_pct(row['iso_format'])} | "
            f"{_pct(row.get('win_rate'))} | {_pct(row.get('loss_rate'))} | {train_s} |"
        )
    lines += ["", "Sample answers: " + "; ".join(f"{k}: `{v['samples'][0]!s}`" for k, v in res.items()), ""]
    return lines


def distill(r: dict) -> list[str]:
    a, res = r["args"], r["results"]
    lines = [
        "## Knowledge distillation: half-depth student",
        "",
        f"Command: `.venv/bin/python benchmarks/techniques_distill.py --teacher-steps {a['teacher_steps']} --steps "
        f"{a['steps']} --rows {a['rows']} --eval {a['eval']}`. Teacher: LoRA SFT on the dates task, merged. Student: "
        "the teacher with every other layer (`make_student`), then full fine-tuning for the same steps without KD "
        "(next-token loss) or with KD (forward KL, τ 2, α 0.5, teacher top-32 cached). Held-out: first "
        f"{a['eval']} test prompts (exact match, greedy) and next-token loss on their reference answers.",
        "",
        "| model | layers | parameters | decode tok/s | exact match | ISO format | held-out loss | train s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in res.items():
        train_s = f"{row['train_s']:.0f}" if row.get("train_s") else ""
        lines.append(
            f"| {name} | {row['layers']} | {row['parameters'] / 1e6:.1f}M | {row['decode_tokens_per_s']:.1f} | "
            f"{_pct(row['exact_match'])} | {_pct(row['iso_format'])} | {row['held_out_loss']:.3f} | {train_s} |"
        )
    return [*lines, ""]


def pretrain(r: dict) -> list[str]:
    a, res = r["args"], r["results"]
    return [
        "## Continued pretraining, then SFT (`stages:`)",
        "",
        f"Command: `.venv/bin/python benchmarks/techniques_pretrain.py --pretrain-steps {a['pretrain_steps']} "
        f"--steps {a['steps']} --rows {a['rows']} --eval {a['eval']}`. Stage 1: objective pretrain on domain text "
        "(packed, LoRA, merged after the stage); stage 2: SFT (LoRA) on the dates chat task. Same SFT steps alone "
        "from the base model for comparison.",
        "",
        "| measure | value |",
        "| --- | ---: |",
        f"| held-out domain perplexity, base | {res['domain_ppl_before']:.2f} |",
        f"| held-out domain perplexity, after stage 1 | {res['domain_ppl_after']:.2f} |",
        f"| exact match, pretrain then SFT | {_pct(res['pretrain_then_sft']['exact_match'])} |",
        f"| exact match, SFT alone | {_pct(res['sft_only']['exact_match'])} |",
        f"| ISO format, pretrain then SFT / SFT alone | {_pct(res['pretrain_then_sft']['iso_format'])} / "
        f"{_pct(res['sft_only']['iso_format'])} |",
        "",
    ]


def adversarial(r: dict) -> list[str]:
    a, res = r["args"], r["results"]
    lines = [
        "## Adversarial fine-tuning: robustness to input perturbations",
        "",
        f"Command: `.venv/bin/python benchmarks/techniques_adversarial.py --steps {a['steps']} --rows {a['rows']} "
        f"--eval {a['eval']} --method {' '.join(a['method'])} --epsilon-ratio {a['epsilon_ratio']}`. LoRA SFT on the "
        f"dates task, same data and steps; ε = {res['epsilon']:.3f} ({a['epsilon_ratio']} x the mean token-embedding "
        f"norm {res['embedding_norm']:.3f}). Exact match on the first {a['eval']} test prompts, clean and perturbed.",
        "",
        "| training | clean | typos | upper case | distractor sentence | train s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in res["runs"].items():
        cells = " | ".join(_pct(row[k]["exact_match"]) for k in ("clean", "typos", "casing", "distractor"))
        lines.append(f"| {'plain SFT' if name == 'none' else name} | {cells} | {row['train_s']:.0f} |")
    return [*lines, ""]


def main() -> None:
    sections = {"alignment": alignment, "distill": distill, "pretrain": pretrain, "adversarial": adversarial}
    lines = [
        "# Training objectives on the embedded model",
        "",
        "SmolLM2-135M-Instruct (embedded), examples/dates (answer with the ISO date only). Each section is one "
        "demo script; rerun it, then `benchmarks/techniques_report.py`, to refresh. Budgets are small because these "
        "ran on a shared 2-core CPU; the loss maths is checked separately against hand-computed numbers and TRL "
        "(tests/test_objectives_losses.py, tests/test_objectives_trl.py).",
        "",
    ]
    for demo, render in sections.items():
        r = _load(demo)
        if r is None:
            lines += [f"## {demo}", "", f"Not run yet: `.venv/bin/python benchmarks/techniques_{demo}.py`.", ""]
            continue
        lines += render(r)
        lines += [f"Device: {r['device']}.", ""]
    OUT.write_text("\n".join(lines))
    print(OUT.read_text())


if __name__ == "__main__":
    main()
