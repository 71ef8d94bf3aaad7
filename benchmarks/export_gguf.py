"""GGUF export on a real model: file size, export time, and how close the file's logits are to the source model.

Exports with `tunelab.export.formats.export` (f16 and q8_0), reads each file back with `gguf.GGUFReader`, loads it
with transformers (`gguf_file=`) and compares logits with the source model on a chat prompt.
Writes benchmarks/results/export_gguf.md.

    .venv/bin/python benchmarks/export_gguf.py --model smollm2-135m
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab.export.formats import export
from tunelab.export.gguf import verify_gguf
from tunelab.methods.trained import load_trained


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="run folder or model source")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "export_gguf.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    source, tokenizer = load_trained(args.model, dtype=torch.float32)
    chat = [{"role": "user", "content": "What is the capital of France? Answer in one word, then count to 12345."}]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        want = source(ids).logits
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for quant in ("f16", "q8_0"):
            started = time.perf_counter()
            path = export(args.model, "gguf", Path(tmp) / f"model-{quant}.gguf", quant=quant)
            seconds = time.perf_counter() - started
            summary = verify_gguf(path)
            loaded = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=path.name, dtype=torch.float32).eval()
            reread = AutoTokenizer.from_pretrained(tmp, gguf_file=path.name)
            with torch.inference_mode():
                got = loaded(ids).logits
            same_tokens = reread(text, add_special_tokens=False)["input_ids"] == ids[0].tolist()
            same_template = reread.chat_template == tokenizer.chat_template
            rows.append(
                f"| {quant} | {path.stat().st_size / 1e6:.1f} | {seconds:.1f} | {len(summary.tensors)} | "
                f"{(got - want).abs().max().item():.3f} | {want.abs().max().item():.1f} | "
                f"{100 * (got.argmax(-1) == want.argmax(-1)).float().mean().item():.1f}% | "
                f"{'yes' if same_tokens else 'NO'} | {'yes' if same_template else 'NO'} |"
            )
            print(rows[-1], flush=True)
    report = "\n".join(
        [
            "# GGUF export",
            "",
            f"Model `{args.model}`; logits compared on a {ids.shape[1]}-token chat prompt against the fp32 source "
            "model (for the embedded SmolLM2 the source is itself de-quantised from a Q4_1 GGUF, so q8_0 adds a "
            "second rounding on top).",
            "",
            "| quant | file (MB) | export (s) | tensors | max abs logit diff | max abs logit | top-1 agreement | "
            "same token ids | same chat template |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Tolerances the tests hold the tiny model to (logits of order 1): f32 1e-5, f16 2e-3, q8_0 3e-2 absolute.",
            "",
            f"Command: `{' '.join(['python', *sys.argv])}`",
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
