"""Balanced vs unbalanced expert routing: a small Mixtral trained with and without the load-balancing loss.

The model is built from transformers' own `MixtralConfig` (random weights: no MoE ships in a PyPI package) with
SmolLM2's tokenizer, and trained in full (routers included) on the dates task (examples/dates, SFT on the answer)
for the same steps, batch and seeds in each arm:

- `aux 0`: `training.router_aux_loss_coef=0`: the routers learn from the language-modelling loss alone;
- `aux <c>`: the balancing loss of each layer, averaged (the default scope), at weight c;
- `pooled aux <c>`: transformers' own form (`training.router_aux_loss_scope=pooled`): one loss of the counts and
  probabilities pooled over the layers;
- `... + z`: the same plus the router z-loss (`training.router_z_loss_coef`).

Read from each run's metrics.jsonl: the expert load per layer (`moe_load/L<i>`: the busiest expert's share of the
top-k assignments times the number of experts, 1.0 = perfectly even) over the last logged steps, the balancing
loss, and the validation loss at the end (mean over seeds with the seeds' range). Writes
benchmarks/results/moe_routing.md and .json, and a plot of the worst layer's load against the step.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/moe_routing.py            # defaults below
    .venv/bin/python benchmarks/moe_routing.py --smoke                      # tiny, results under the temp folder
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from techniques_common import DATES, MODEL, RESULTS, device_note, shared_note, train

TAIL = 10
"""Logged steps at the end whose expert load is averaged."""


def build_moe(out: Path, layers: int, hidden: int, experts: int, top_k: int, coef: float) -> Path:
    """A random Mixtral with SmolLM2's tokenizer, saved where `model.source` can read it."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    from tunelab.models.load import load_tokenizer, resolve_source

    tokenizer = load_tokenizer(resolve_source(MODEL))
    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=experts, num_experts_per_tok=top_k,
        router_aux_loss_coef=coef, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    model = MixtralForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def read_run(run_dir: Path, layers: int) -> dict:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [x for x in lines if "moe_load_max" in x]
    tail = steps[-TAIL:]
    val = [x["val_loss"] for x in lines if "val_loss" in x]
    return {
        "load_max": statistics.mean(x["moe_load_max"] for x in tail),
        "load_layers": [statistics.mean(x[f"moe_load/L{i}"] for x in tail) for i in range(layers)],
        "aux_loss": statistics.mean(x["moe_aux_loss"] for x in tail),
        "z_loss": statistics.mean(x["moe_z_loss"] for x in tail) if "moe_z_loss" in tail[-1] else None,
        "val_loss": val[-1] if val else None,
        "curve": [(x["step"], x["moe_load_max"]) for x in steps],
    }


def spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{mean:.3f} ({min(values):.3f}–{max(values):.3f})" if len(values) > 1 else f"{mean:.3f}"


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    colors = plt.get_cmap("tab10")
    for index, (arm, runs) in enumerate(results.items()):
        color = colors(index % 10)
        for k, run in enumerate(r for r in runs if r.get("curve")):  # arms measured before curves were kept: none
            steps, load = zip(*run["curve"], strict=True)
            ax.plot(steps, load, color=color, alpha=0.8, lw=1.2, label=arm if k == 0 else None)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("worst layer's expert load (1 = even)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--coef", type=float, default=0.02, help="the model config's router_aux_loss_coef")
    parser.add_argument("--z", type=float, default=0.001, help="router z-loss weight of the third arm")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--val-rows", type=int, default=100, help="held-out rows of the final validation loss")
    parser.add_argument("--extra-coefs", type=float, nargs="*", default=[], help="more balancing-loss weights")
    parser.add_argument("--only", nargs="*", help="run these arms; keep the others' results from the JSON")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.seeds, args.layers, args.hidden, args.val_rows = 6, 1, 2, 64, 16
    work = Path(tempfile.mkdtemp(prefix="tunelab-moe-"))
    out_dir = work if args.smoke else RESULTS
    started = time.perf_counter()
    source = build_moe(work / "model", args.layers, args.hidden, args.experts, args.top_k, args.coef)
    validation = work / "validation.jsonl"
    validation.write_text("".join(x + "\n" for x in (DATES / "test.jsonl").read_text().splitlines()[: args.val_rows]))
    arms: dict[str, list[str]] = {"aux 0": ["training.router_aux_loss_coef=0"]}
    for c in [args.coef, *args.extra_coefs]:  # per layer (the default) and transformers' pooled form
        arms[f"aux {c:g}"] = [f"training.router_aux_loss_coef={c}"]
        arms[f"pooled aux {c:g}"] = [f"training.router_aux_loss_coef={c}", "training.router_aux_loss_scope=pooled"]
    z = [f"training.router_aux_loss_coef={args.coef}", f"training.router_z_loss_coef={args.z}"]
    arms[f"aux {args.coef:g} + z {args.z:g}"] = z
    arms[f"pooled aux {args.coef:g} + z {args.z:g}"] = [*z, "training.router_aux_loss_scope=pooled"]
    if args.only:
        arms = {name: extra for name, extra in arms.items() if name in args.only}
    common = [
        f"data.train={DATES / 'train.jsonl'}", f"data.validation={validation}", "method=full",
        f"training.max_steps={args.steps}", f"training.batch_size={args.batch}", f"training.learning_rate={args.lr}",
        "training.warmup_ratio=0.05", "training.eval_every=null", "training.log_every=1",
        "data.max_length=128",
    ]  # fmt: skip
    saved = out_dir / "moe_routing.json"
    earlier = json.loads(saved.read_text()) if args.only and saved.is_file() else {}
    results: dict[str, list[dict]] = dict(earlier.get("results", {}))
    seconds: dict[str, float] = dict(earlier.get("seconds", {}))
    for arm, extra in arms.items():
        results[arm] = []
        for seed in range(args.seeds):
            name = f"{arm.replace(' ', '_').replace('+', 'plus')}-seed{seed}"
            run, took = train(name, work / "runs", [*common, *extra, f"training.seed={seed}"], model=str(source))
            results[arm].append(read_run(run.run_dir, args.layers))
            seconds[name] = round(took, 1)
            print(f"{name}: load {results[arm][-1]['load_max']:.3f}, val {results[arm][-1]['val_loss']}", flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(results, out_dir / "moe_routing.png")
    wall = earlier.get("wall_s", 0.0) + time.perf_counter() - started
    payload = {"args": {**earlier.get("args", {}), **vars(args)}, "device": device_note(), "seconds": seconds,
               "wall_s": wall, "results": results}  # fmt: skip
    (out_dir / "moe_routing.json").write_text(json.dumps(payload, indent=1))
    (out_dir / "moe_routing.md").write_text(report(args, results, payload))
    print((out_dir / "moe_routing.md").read_text())


def report(args: argparse.Namespace, results: dict[str, list[dict]], payload: dict) -> str:
    head = "| arm | worst layer's load | load per layer | balancing loss | z-loss | validation loss |"
    lines = [
        "# Mixture of experts: balanced vs unbalanced routing", "",
        f"A random Mixtral from transformers' `MixtralConfig` ({args.layers} layers, hidden {args.hidden}, "
        f"{args.experts} experts, top-{args.top_k}; SmolLM2's tokenizer, tied embeddings), trained in full (routers "
        f"included) on examples/dates for {args.steps} steps of batch {args.batch} at lr {args.lr:g}, "
        f"{args.seeds} seed(s) per arm (initialisation is the same saved model; the seed sets batch order and "
        "dropout). Expert load: the busiest expert's share of the top-k assignments times the number of experts "
        f"(1.0 = even; a token's top-{args.top_k} experts are distinct, so one expert holds at most 1/{args.top_k} of "
        f"the assignments and the load is at most {args.experts / args.top_k:g}: that expert then serves every token), "
        f"averaged over the last {TAIL} logged steps; "
        f"mean over seeds with their range in brackets. Validation loss: the first {args.val_rows} held-out rows at "
        "the end.", "",
        head, "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for arm, runs in results.items():
        layers = " / ".join(f"{statistics.mean(r['load_layers'][i] for r in runs):.2f}" for i in range(args.layers))
        z = [r["z_loss"] for r in runs if r["z_loss"] is not None]
        lines.append(
            f"| {arm} | {spread([r['load_max'] for r in runs])} | {layers} | {spread([r['aux_loss'] for r in runs])} "
            f"| {spread(z) if z else '–'} | {spread([r['val_loss'] for r in runs if r['val_loss'] is not None])} |"
        )
    base = [r["load_max"] for r in results.get("aux 0", [])]
    notes = []
    for arm, runs in results.items():
        if arm == "aux 0" or not base:
            continue
        other = [r["load_max"] for r in runs]
        apart = min(base) > max(other) or min(other) > max(base)
        notes.append(f"{arm}: {statistics.mean(other):.2f} (seed ranges {'apart' if apart else 'overlap'})")
    lines += [
        "", f"Reading: the worst layer's load is {statistics.mean(base):.2f} without the balancing loss; "
        f"{'; '.join(notes)}. The balancing-loss column is E · Σ f·P in the form the arm used ({args.top_k} when "
        f"even, up to {args.experts} when every token goes to the same {args.top_k} experts; `aux 0` logged the "
        "pooled form): the pooled arms drive it to its even value while their layers stay near collapse, because "
        "layers collapsed onto different experts add up to an even pooled count; the per-layer loss balances each "
        "layer at no cost in validation loss.", "",
        "![worst layer's expert load against the step](moe_routing.png)", "",
        "The plot draws the arms whose per-step curves the JSON keeps (the first arms were measured before it kept "
        "them; their end values are in the table).", "",
        f"Whole demo {payload['wall_s']:.0f} s. Device: {payload['device']}. {shared_note()}", "",
    ]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
