"""Adversarial fine-tuning demo: SFT of SmolLM2-135M-Instruct on examples/dates with and without embedding-space
adversarial training, then held-out exact match on clean prompts and on prompts with typos, upper case, or a
distractor sentence appended.

Both runs see the same data for the same number of steps (equal clean budget); the adversarial ones add FGM (or
`--method`) with ε set to `--epsilon-ratio` times the mean norm of the model's token embeddings.

    .venv/bin/python benchmarks/techniques_adversarial.py
    .venv/bin/python benchmarks/techniques_adversarial.py --steps 1 --eval 4 --rows 16   # smoke
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from techniques_common import MODEL, answer, perturbations, prompt_and_reference, rows, save, score, train, write_jsonl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--rows", type=int, default=192)
    parser.add_argument("--eval", type=int, default=40)
    parser.add_argument("--method", nargs="*", default=["fgm"], choices=["fgm", "pgd", "freelb", "smart"])
    parser.add_argument("--epsilon-ratio", type=float, default=0.1)
    args = parser.parse_args()

    from tunelab.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(MODEL)
    norm = float(load_model(MODEL).get_input_embeddings().weight.norm(dim=-1).mean())
    epsilon = args.epsilon_ratio * norm
    test = [prompt_and_reference(r) for r in rows("test")[: args.eval]]
    references = [r for _, r in test]
    sets = {"clean": [p for p, _ in test]}
    for kind in ("typos", "casing", "distractor"):
        sets[kind] = [perturbations(p, seed=i)[kind] for i, (p, _) in enumerate(test)]
    results: dict = {"embedding_norm": norm, "epsilon": epsilon, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="tunelab-adv-") as tmp:
        work = Path(tmp)
        data = write_jsonl(work / "train.jsonl", rows("train")[: args.rows])
        common = [f"data.train={data}", "data.val_fraction=0", "method=lora", "method.r=16", "method.alpha=32",
                  "training.batch_size=8", f"training.max_steps={args.steps}", "training.warmup_ratio=0.1",
                  "training.learning_rate=1e-3"]  # fmt: skip
        for name in ["none", *args.method]:
            extra = [] if name == "none" else [
                f"training.adversarial.method={name}", f"training.adversarial.epsilon={epsilon}",
                f"training.adversarial.alpha={epsilon / 2}", "training.adversarial.steps=2",
            ]  # fmt: skip
            run, seconds = train(name, work, [*common, *extra])
            row = {kind: score(answer(run.model, tokenizer, prompts), references) for kind, prompts in sets.items()}
            results["runs"][name] = {**row, "train_s": seconds}
            print(name, results["runs"][name], flush=True)
    save("adversarial", {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()
