"""Every command's arguments, and nothing else: building the parser imports no model code, so `tunelab --help` and a
mistyped flag answer at once. Each command names its handler as `module:function` of `tunelab.cli`; `main` imports
that module only when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# Spelled out here rather than imported from the modules that define them, which import torch.
EXPORT_FORMATS = ("hf", "peft", "gguf")
MERGE_METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "dare_linear")


def _adapter(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--adapter takes NAME=PATH, got '{text}'")
    return name, Path(path)


def _suite_arguments(p: argparse.ArgumentParser) -> None:
    """`tunelab eval --suite ...`: the robustness suite and the bias probe (tunelab.eval.suites)."""
    g = p.add_argument_group("suites", "robustness and bias suites (base and tuned side by side for a run folder)")
    g.add_argument("--suite", action="append", metavar="NAME", help="robustness or bias (repeatable)")
    g.add_argument("--suite-out", help="folder for robustness.json, bias.json, the saved suite and answers "
                   "(default: the folder of --out, else RUN/eval for a run, else ./eval)")  # fmt: skip
    g.add_argument("--suite-file", help="replay a saved robustness_suite.jsonl (same prompts, no re-perturbing)")
    g.add_argument("--perturb", action="append", metavar="NAME", help="perturbation (repeatable): typos, case, "
                   "whitespace, punctuation, template, distractor, paraphrase, or package.module:function; "
                   "default all built-in ones")  # fmt: skip
    g.add_argument("--typo-rate", type=float, default=0.05, help="chance each letter gets a typo (default 0.05)")
    g.add_argument("--paraphraser", default="base", help="model that paraphrases: base (the run's base model, "
                   "or the model itself), none, or any model source")  # fmt: skip
    g.add_argument("--suite-metric", default="exact_match", choices=["exact_match", "token_f1", "rouge_l"],
                   help="a generator's per-row score in the robustness suite (classifiers: accuracy)")  # fmt: skip
    g.add_argument("--attribute", action="append", help="shipped term list to probe (repeatable): gender, names, "
                   "religion, age, nationality; default all (or none when --terms is given)")  # fmt: skip
    g.add_argument("--terms", action="append", metavar="FILE", help="your own term list ('groups: a | b', then "
                   "one 'x | y' line per term); its attribute is the file name")  # fmt: skip
    g.add_argument("--max-fills", type=int, default=4, help="term lines a {attribute} template slot is filled with")
    g.add_argument("--worst", type=int, default=5, help="worst bias pairs listed per attribute")


def _harness_arguments(p: argparse.ArgumentParser) -> None:
    """`tunelab eval --harness ...`: lm-evaluation-harness tasks (tunelab.eval.harness)."""
    g = p.add_argument_group("lm-evaluation-harness", "lm-eval tasks on the model (two models or --base: paired)")
    g.add_argument("--harness", action="append", metavar="TASKS", help="lm-eval task names, comma-separated or "
                   "repeated (local task files: --harness-tasks-dir); --max-examples: documents per task")  # fmt: skip
    g.add_argument("--harness-tasks-dir", metavar="DIR", help="folder of lm-eval task YAML files (a relative "
                   "data_files path is read from the task file's folder)")  # fmt: skip
    g.add_argument("--harness-shots", type=int, help="few-shot examples per prompt (default: the task's own)")
    g.add_argument("--harness-chat", action=argparse.BooleanOptionalAction, default=None,
                   help="wrap prompts in the tokenizer's chat template (default: when it has one)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunelab", description="Fine-tune language models end to end.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    p = add("train", "train:train", "Fine-tune a model as a config says; writes a run folder.")
    p.add_argument("config", nargs="?", help="YAML config (or, with --resume, a run folder)")
    p.add_argument("--data", help="training data file (a config naming only the data is optional)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. training.learning_rate=1e-4")
    p.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    p.add_argument("--resume-changed", action="store_true",
                   help="with --resume: continue even though the config (or the data) differs from the one the "
                   "checkpoint was trained with; the differences are listed")  # fmt: skip

    p = add("validate", "train:validate", "Check a config without running it.")
    p.add_argument("config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")

    p = add("lr-find", "train:lr_find", "Learning-rate range test: the loss as the rate grows; a suggested rate.")
    p.add_argument("config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--start", type=float, default=1e-7, help="first learning rate (default 1e-7)")
    p.add_argument("--end", type=float, default=1.0, help="last learning rate (default 1)")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps from start to end (default 100)")

    p = add("tune", "tune:tune", "Hyperparameter search (Optuna) over the config's tune: section; writes "
            "<output.dir>/<study>/ with every trial's run, trials.csv/.md, best.yaml and plots.")  # fmt: skip
    p.add_argument("config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. tune.metric=exact_match")
    p.add_argument("--trials", type=int, help="trials the study finishes (tune.trials)")
    p.add_argument("--timeout", help="start no trial after this long: seconds or e.g. 2h (tune.timeout)")
    p.add_argument("--storage", help="SQLAlchemy URL of the study database (default: study.db in the study folder)")
    p.add_argument("--study", help="study name and folder (tune.study; default: the config's name)")
    p.add_argument("--workers", type=int, help="worker processes on this machine (tune.workers)")
    p.add_argument("--seed", type=int, help="sampler seed (tune.seed); give each machine's worker its own")
    p.add_argument("--dry-run", action="store_true", help="print the space and the estimated cost (a probe of a few "
                   "steps); run no trial")  # fmt: skip
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)

    p = add("plan", "tune:plan", "Before training: rows, tokens, optimizer steps, and peak memory and time measured "
            "by a probe of a few real steps.")  # fmt: skip
    p.add_argument("config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--probe-steps", type=int, default=4, help="real optimizer steps the probe trains (default 4)")

    p = add("eval", "eval:evaluate", "Generate answers for a data file and score them against its references.")
    p.add_argument("model", nargs="+", help="run folder, embedded model name, HF folder or .gguf file; two: both "
                   "scored on the same rows and compared with paired tests; several with --ensemble: one ensemble "
                   "of them (same tokenizer)")  # fmt: skip
    p.add_argument("--data", help="JSONL with reference answers (last assistant turn); not needed with --harness")
    p.add_argument("--base", action="store_true", help="compare the run with the base model it was trained from")
    p.add_argument("--ensemble", choices=["probs", "logits"],
                   help="several models answer as one: average their next-token probabilities (a mixture) "
                   "or their logits (a product of experts)")  # fmt: skip
    p.add_argument("--weights", type=float, nargs="+", help="one weight per model of an ensemble (default equal)")
    p.add_argument("--out", help="where to write per-example predictions (default predictions.jsonl); when "
                   "comparing, the folder for both predictions and comparison.json (default comparison)")  # fmt: skip
    p.add_argument("--confidence", type=float, default=0.95, help="confidence of intervals and tests (default 0.95)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--json-schema", help="JSON Schema file that structured answers must validate against")
    p.add_argument("--similarity", nargs="?", const="minilm-l6", metavar="ENCODER",
                   help="score each answer's embedding similarity to its reference (default minilm-l6)")  # fmt: skip
    p.add_argument("--max-examples", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--system", help="system prompt for every example")
    p.add_argument("--bf16", action="store_true", help="generate under bf16 autocast (faster on CPUs with AMX)")
    p.add_argument("--shots", type=int, default=0, help="k demonstrations before each question (0: zero-shot)")
    p.add_argument("--shot-pool", help="solved examples to draw demonstrations from (e.g. the training file)")
    p.add_argument("--shot-selection", choices=["random", "similar"], default="random",
                   help="demonstrations at random (seeded) or the most similar by embedding")  # fmt: skip
    p.add_argument("--shot-layout", choices=["turns", "inline"], default="turns",
                   help="demonstrations as chat turns, or inline in one user message (Input:/Output:)")  # fmt: skip
    p.add_argument("--shot-embedder", default="minilm-l6", help="encoder for --shot-selection similar")
    p.add_argument("--shot-overflow", choices=["error", "drop"], default="error",
                   help="a prompt longer than the model's context: stop (error), or leave out the demonstrations "
                   "farthest from the question and report how many (drop)")  # fmt: skip
    p.add_argument("--long-prompts", choices=["error", "hierarchical"], default="error",
                   help="a prompt longer than the model's context: stop (error), or answer it from the model's notes "
                   "on the parts of its longest message (hierarchical)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of random demonstrations")
    _suite_arguments(p)
    _harness_arguments(p)

    p = add("explain", "explain:explain", "Token attributions of a model's answer to a prompt (or a classifier's "
            "label): coloured in the terminal, and an HTML heat map.")  # fmt: skip
    p.add_argument("model", help="run folder, embedded model name, HF folder or .gguf file")
    p.add_argument("--prompt", required=True, help="the user message (a classifier: the text to label)")
    p.add_argument("--target", help="answer text to explain (default: the model's greedy answer), or a label name")
    p.add_argument("--method", choices=["ig", "ixg", "rollout"], default="ig",
                   help="integrated gradients, input x gradient, or attention rollout (default ig)")  # fmt: skip
    p.add_argument("--per-token", action="store_true", help="attributions of each answer token, not only the sum")
    p.add_argument("--steps", type=int, default=50, help="integrated-gradients steps (default 50)")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-new-tokens", type=int, default=64, help="length of the generated answer to explain")
    p.add_argument("--out", help="HTML file (default RUN/explain/<method>.html, or ./explain-<method>.html)")

    p = add(
        "diagnose",
        "diagnose:diagnose",
        "Fitting diagnosis of a run from its metrics.jsonl: underfitting, good "
        "fit, overfitting or unstable, with evidence and advice; writes diagnosis.json and learning_curves.png.",
    )
    p.add_argument("run", help="run folder")

    p = add(
        "merge",
        "export:merge",
        "Merge a run's adapter into its base model: a standalone HF folder (the same as "
        "`export --format hf --out RUN/merged`).",
    )
    p.add_argument("run")
    p.add_argument("--out", help="output folder (default RUN/merged)")

    p = add("generate", "infer:generate", "Answer one or more prompts.")
    p.add_argument("model")
    p.add_argument("--prompt", action="append", required=True)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--system")

    p = add("chat", "infer:chat", "Chat with a model or run in the terminal.")
    p.add_argument("model")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--system")
    p.add_argument("--url", help="talk to a running server (e.g. http://127.0.0.1:8000); MODEL is its model id")
    p.add_argument("--api-key", help="Bearer key for --url (default: $TUNELAB_API_KEY)")

    add("models", "models:models", "List the embedded models.")

    p = add("export", "export:export", "Export a run (or model) as a merged HF folder, a PEFT adapter or a GGUF file.")
    p.add_argument("run", help="run folder (or, for hf and gguf, any model source)")
    p.add_argument(
        "--format", required=True, choices=EXPORT_FORMATS, help="hf: merged folder; peft: adapter; gguf: file"
    )
    p.add_argument("--quant", default="f16", choices=["f16", "q8_0", "f32"], help="GGUF weight type (default f16)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="hf weight dtype")
    p.add_argument("--out", help="output folder or .gguf file (default RUN/export/...)")

    help_text = "Serve a run or model over an OpenAI-compatible HTTP API."
    p = add("serve", "serve:serve", help_text)
    p.add_argument("model", help="run folder, embedded model name, HF folder or .gguf file")
    p.add_argument("--name", help="model id clients use (default: the run or folder name)")
    p.add_argument("--adapter", action="append", type=_adapter, metavar="NAME=PATH", help="LoRA adapter to serve")
    p.add_argument("--adapter-dir", type=Path, help="folder whose PEFT adapters load on first request by name")
    p.add_argument("--embedding-model", help="encoder for /v1/embeddings next to the LM (e.g. minilm-l6)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", action="append", help="accepted Bearer key (repeatable; or TUNELAB_API_KEYS)")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bf16", "fp32", "fp16"],
        help="weights dtype (default auto: bf16 where the device computes it fast, else fp32)",
    )
    p.add_argument("--int8", action="store_true", help="int8 dynamic quantisation of Linear layers (CPU)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--max-batch-size", type=int, default=16, help="sequences decoded together")
    p.add_argument("--max-queue", type=int, default=64, help="waiting sequences before 429")
    p.add_argument("--max-tokens-limit", type=int, default=1024, help="largest max_tokens a request may ask")
    p.add_argument("--long-prompts", choices=["error", "hierarchical"], default="error",
                   help="a chat prompt with no room left for its answer: 400 (error), or answer it from the model's "
                   "notes on the parts of its longest message (hierarchical)")  # fmt: skip
    p.add_argument("--max-body-bytes", type=int, default=1_000_000, help="largest request body")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request before 504")
    p.add_argument("--body-timeout", type=float, default=30.0, help="seconds to send a request body before 408")
    p.add_argument("--max-connections", type=int, default=256, help="connections in flight before 503")
    p.add_argument(
        "--allow-host", action="append", metavar="NAME", help="Host name a keyless server answers besides loopback"
    )
    p.add_argument("--max-pattern-chars", type=int, default=10_000, help="longest regex / JSON schema text")
    p.add_argument("--max-pattern-repeat", type=int, default=256, help="largest {N} in a pattern (nested: product)")
    p.add_argument("--constraint-timeout", type=float, default=30.0, help="seconds a new pattern may compile")
    p.add_argument("--constraint-memory-mb", type=int, default=2048, help="memory of a pattern compile process")
    p.add_argument("--constraint-workers", type=int, default=2, help="processes compiling new patterns at once")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the model folder")
    p.add_argument("--log", metavar="DB", help="log every request and answer (and accept POST /v1/feedback and "
                   "the /review page): a SQLite file or a SQLAlchemy URL (postgresql+psycopg://...)")  # fmt: skip
    p.add_argument("--log-mask", default="email,phone,ip", metavar="KINDS",
                   help="personal data masked before logging: comma-separated email, phone, ip, or none")  # fmt: skip
    p.add_argument("--log-max-rows", type=int, help="requests the log keeps (older ones deleted)")
    p.add_argument("--log-max-age", metavar="DURATION", help="how long a request stays in the log, e.g. 30d")
    p.add_argument("--log-queue", type=int, default=10_000, help="answers waiting to be written before new ones "
                   "are dropped (counted in /metrics)")  # fmt: skip
    p.add_argument("--log-server", help="this server's name in a shared log (default HOST:PORT)")
    p.add_argument("--champion", metavar="FILE", help="a champion pointer (`tunelab retrain` writes it): serve the "
                   "run it names, and swap in a newly promoted one on POST /v1/admin/reload")  # fmt: skip

    p = add("monitor", "monitor:monitor", "Drift and quality of served traffic (serve --log) against the run's "
            "training data, per time window: a report, alert lines, exit code 1 past a threshold.")  # fmt: skip
    p.add_argument("run", help="the run folder whose model is served")
    p.add_argument("--log", required=True, metavar="DB", help="the traffic log: SQLite file or SQLAlchemy URL")
    p.add_argument("--window", help="window length, e.g. 1h (default), 15m, 1d")
    p.add_argument("--since", metavar="DURATION", help="only requests newer than this, e.g. 24h")
    p.add_argument("--thresholds", metavar="FILE", help="YAML of monitor settings and thresholds (embedding_p, ...)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="one setting, e.g. embedding_p=0.001")
    p.add_argument("--out", help="report folder (default RUN/monitor)")

    p = add("retrain", "retrain:retrain", "The next dataset from the traffic log (corrections -> SFT, choices -> "
            "DPO/KTO pairs, thumbs-down -> review queue) with replay of RUN's data, a challenger trained from RUN, "
            "a paired gate on old and new cases, and promotion only if it passes.")  # fmt: skip
    p.add_argument("run", help="the run folder of the served model (the champion)")
    p.add_argument("--log", required=True, metavar="DB", help="the traffic log: SQLite file or SQLAlchemy URL")
    p.add_argument("--gate", metavar="FILE", help="chat JSONL of new gate cases (default: hold out corrections)")
    p.add_argument("--out", help="retrain folder (default ROOT-retrain-K beside the family's first run)")
    p.add_argument("--min-feedback", type=int, default=8, help="least corrections + choices to train on")
    p.add_argument("--gate-fraction", type=float, default=0.3, help="share of corrected prompts held out")
    p.add_argument("--replay", type=float, default=0.5, help="share of the SFT mix replayed from RUN's data")
    p.add_argument("--pairs", choices=["dpo", "kto", "off"], default="dpo", help="objective of the pairs stage")
    p.add_argument("--max-old", type=int, help="most old gate cases (default RUN's eval.max_examples)")
    p.add_argument("--alpha", type=float, default=0.05, help="McNemar p below which the new-case gain counts")
    p.add_argument("--min-gain", type=float, default=0.0, help="least new-case gain in exact match (0.05 = 5 pp)")
    p.add_argument("--old-margin", type=float, default=0.02, help="non-inferiority margin on old cases")
    p.add_argument("--champion", metavar="FILE", help="champion pointer (default ROOT-champion.json)")
    p.add_argument("--no-promote", action="store_true", help="gate only: never write the champion pointer")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="challenger config, e.g. training.max_steps=40")
    p.add_argument("--seed", type=int, default=0)

    p = add("ui", "ui:ui", "Web dashboard over a runs folder: runs, curves, evals, compare, start/stop/resume, chat.")
    p.add_argument("--runs", default="runs", help="folder of run folders (default runs)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need --token)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--token", help="access token (or TUNELAB_UI_TOKEN); open the dashboard once with ?token=T")
    p.add_argument("--data-dir", action="append", metavar="DIR", help="folder (besides --runs) whose data and "
                   "models runs started from the dashboard may read (repeatable)")  # fmt: skip

    data = sub.add_parser(
        "data",
        help="Inspect data files, or prepare a config's dataset.",
        description="Inspect data files, or prepare a config's dataset.",
    )
    group = data.add_subparsers(dest="data_command", required=True)

    p = group.add_parser(
        "inspect",
        help="Formats, counts, rejects, duplicates, lengths and labels of data files.",
        description="Read every row of the files (nothing is changed): detected format, rows kept and rejected "
        "with file:line and reason, exact and near duplicates, token length histogram, label balance, examples. "
        "Formats: chat (messages), sharegpt (conversations), alpaca (instruction/input/output), "
        "prompt_completion, text (or .txt files), preference (prompt/chosen/rejected), openai_preference "
        "(input/preferred_output/non_preferred_output), classification (text/label), pairs (anchor/positive), "
        "token_classification (tokens/tags).",
    )
    p.add_argument("files", nargs="+", help="data files, folders or glob patterns")
    p.add_argument("--format", default="auto", help="row format of every file (default: detected per file)")
    p.add_argument(
        "--model",
        default="smollm2-135m",
        help="whose tokenizer measures lengths (embedded name or folder); 'none' counts words",
    )
    p.add_argument(
        "--text-unit",
        choices=["line", "paragraph", "document"],
        default="line",
        help="how .txt files are cut into records",
    )
    p.add_argument("--max-row-chars", type=int, default=1_000_000, help="rows longer than this are rejected")
    p.add_argument("--near-threshold", type=float, default=0.8, help="Jaccard similarity of near duplicates")
    p.add_argument("--no-near", action="store_true", help="count exact duplicates only (faster)")
    p.add_argument("--rejects", help="write every rejected row to this JSON Lines file")
    p.add_argument("--show", type=int, default=1000, help="rejects to list (default 1000)")
    p.add_argument("--num-proc", type=int, default=1, help="processes for reading and hashing")
    p.add_argument(
        "--sample",
        type=int,
        default=5000,
        help="rows whose token length is measured, at random (default 5000; counts and duplicates use every row)",
    )
    p.add_argument(
        "--max-length",
        type=int,
        default=1024,
        help="list rows longer than this many tokens, as training would cut or reject them (data.max_length)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler="data:inspect")

    p = group.add_parser(
        "prepare",
        help="Run a config's data pipeline; write the dataset, report.json, report.md and plots.",
        description="Run the data pipeline of a config (the `data` section, the model's tokenizer, the training "
        "seed): validate, clean, deduplicate, split, check contamination, tokenize. The prepared dataset is "
        "cached by fingerprint, so `tunelab train` with the same config reuses it.",
    )
    p.add_argument("config", help="YAML config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. data.clean.dedup=near")
    p.add_argument("--out", help="folder for the dataset and reports (default prepared/<config name>)")
    p.add_argument("--num-proc", type=int, help="processes (overrides data.num_proc)")
    p.set_defaults(handler="data:prepare")

    help_text = "Merge fine-tuned models or LoRA adapters (linear, task arithmetic, TIES, DARE; mergekit recipes)."
    p = add("merge-models", "export:merge_models", help_text)
    p.add_argument("recipe", nargs="?", help="mergekit-style YAML recipe (or use the flags below)")
    p.add_argument("--out", required=True, help="output folder (an HF model folder or a PEFT adapter)")
    p.add_argument("--method", choices=MERGE_METHODS, help="merge method")
    p.add_argument("--base", help="base model the inputs were fine-tuned from (inferred from runs/adapters)")
    p.add_argument("--model", action="append", help="run folder, model folder or adapter; repeat per model")
    p.add_argument("--weight", action="append", type=float, help="weight, once for all or once per --model")
    p.add_argument("--density", action="append", type=float, help="TIES/DARE density, once or per --model")
    p.add_argument("--lambda", dest="lam", type=float, help="scale of the merged task vector (default 1)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None, help="divide by weight sum")
    p.add_argument("--rescale", action=argparse.BooleanOptionalAction, default=None, help="DARE rescaling")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="output dtype (default: base's)")
    p.add_argument("--seed", type=int, default=0, help="seed of DARE's random masks")
    p.add_argument("--output", choices=["auto", "model", "adapter"], default="auto", help="what to write")
    p.add_argument("--rank", type=int, help="SVD rank for an adapter output of ties/dare")
    return parser
