"""llama.cpp for the benchmarks: build llama-cpp-python from its source package, and read llama.cpp's own tables.

The build is the benchmark's setup, never CI's: it compiles llama.cpp for many minutes on 2 cores, so it runs once
into a cache folder (CPU only, no CUDA/Metal/Vulkan/BLAS, no tools, examples, tests or server) under
`flock /tmp/bench.lock`, and later runs import it from there.

The same source package carries llama.cpp's converter and vocabulary code, from which tunelab's pre-tokenizer table
(src/tunelab/export/llama_cpp_pretokenizers.json) is extracted:

    .venv/bin/python benchmarks/llama_cpp_setup.py --write-table     # regenerate the vendored table from the sdist
    .venv/bin/python benchmarks/llama_cpp_setup.py --check-table     # fail when the vendored table differs from it
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

VERSION = "0.3.36"
CACHE = Path(os.environ.get("TUNELAB_BENCH_CACHE", Path.home() / ".cache" / "tunelab-bench"))
TARGET = CACHE / f"llama-cpp-python-{VERSION}"
SDIST = CACHE / f"llama_cpp_python-{VERSION}.tar.gz"
TABLE = Path(__file__).resolve().parents[1] / "src" / "tunelab" / "export" / "llama_cpp_pretokenizers.json"
CMAKE_ARGS = (
    "-DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF -DGGML_OPENMP=ON "
    "-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF "
    "-DLLAMA_BUILD_SERVER=OFF"
)
# The two pre-tokenizers an unknown byte-level vocabulary may be matched against by its split (see gguf_vocab.py).
SPLIT_NAMES = ("gpt-2", "smollm")


def sdist() -> Path:
    """The llama-cpp-python source package, downloaded once with pip into the cache."""
    if not SDIST.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        pip = [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={VERSION}"]
        subprocess.run([*pip, "--no-deps", "--no-binary", ":all:", "-d", str(CACHE)], check=True)
    return SDIST


def ensure_llama_cpp() -> ModuleType:
    """Import `llama_cpp`, building it from the source package into the cache first when it is not there."""
    if not (TARGET / "llama_cpp" / "__init__.py").is_file():
        env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
        pip = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--target",
            str(TARGET),
            str(sdist()),
            "diskcache>=5.6.1",
        ]
        print(f"building llama-cpp-python {VERSION} from source into {TARGET} (many minutes) ...", flush=True)
        subprocess.run(["flock", "/tmp/bench.lock", *pip], check=True, env=env)
    sys.path.insert(0, str(TARGET))
    return importlib.import_module("llama_cpp")


@dataclass
class Greedy:
    """What one greedy run produced: generated ids per prompt (stop token left out) and wall seconds."""

    ids: list[list[int]]
    seconds: float

    @property
    def tokens(self) -> int:
        return sum(len(x) for x in self.ids)


class LlamaCpp:
    """A llama.cpp context over a GGUF file with greedy decoding of many sequences in one batch per step.

    llama-cpp-python's `Llama` runs one sequence at a time; for concurrent sequences this drives llama.cpp's C API
    the way its own `batched` example does: every running sequence adds its next token to one `llama_batch`
    (its own seq_id and position), one `llama_decode` serves them all, and each row takes its argmax.
    """

    def __init__(self, path: Path, threads: int, n_seq: int, n_ctx: int) -> None:
        self.lib = lib = ensure_llama_cpp()
        self._quiet = lib.llama_log_callback(lambda level, text, user: None)
        lib.llama_log_set(self._quiet, None)
        lib.llama_backend_init()
        self.model = lib.llama_model_load_from_file(str(path).encode(), lib.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        params = lib.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, 2048, 512
        params.n_seq_max, params.kv_unified = n_seq, True
        params.n_threads = params.n_threads_batch = threads
        self.ctx = lib.llama_init_from_model(self.model, params)
        self.vocab = lib.llama_model_get_vocab(self.model)
        self.n_vocab = lib.llama_vocab_n_tokens(self.vocab)
        self.n_seq = n_seq

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's own tokenisation of a rendered prompt (special tokens parsed, no BOS added)."""
        data = text.encode()
        buf = (self.lib.llama_token * (len(data) + 8))()
        n = self.lib.llama_tokenize(self.vocab, data, len(data), buf, len(buf), False, True)
        return list(buf[:n])

    def generate(self, prompts: list[list[int]], max_new: int, stops: list[int]) -> Greedy:
        """Greedy continuations of `prompts`, run `n_seq` at a time, each up to `max_new` tokens or a stop."""
        start, out = time.perf_counter(), []
        for i in range(0, len(prompts), self.n_seq):
            out.extend(self._group(prompts[i : i + self.n_seq], max_new, set(stops)))
        return Greedy(out, time.perf_counter() - start)

    def _group(self, prompts: list[list[int]], max_new: int, stops: set[int]) -> list[list[int]]:
        lib = self.lib
        lib.llama_memory_clear(lib.llama_get_memory(self.ctx), True)
        batch = lib.llama_batch_init(max(2048, sum(map(len, prompts))), 0, 1)
        try:
            rows = [(s, len(p) - 1, p[-1]) for s, p in enumerate(prompts)]
            self._decode(batch, [(s, pos, t, False) for s, p in enumerate(prompts) for pos, t in enumerate(p[:-1])])
            out: list[list[int]] = [[] for _ in prompts]
            while rows:
                self._decode(batch, [(s, pos, t, True) for s, pos, t in rows])
                running = []
                for k, (s, pos, _) in enumerate(rows):
                    logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(self.ctx, k), shape=(self.n_vocab,))
                    token = int(logits.argmax())
                    if token in stops:
                        continue
                    out[s].append(token)
                    if len(out[s]) < max_new:
                        running.append((s, pos + 1, token))
                rows = running
            return out
        finally:
            lib.llama_batch_free(batch)

    def _decode(self, batch: Any, items: list[tuple[int, int, int, bool]]) -> None:
        """Decode (seq_id, position, token, wants_logits) items, in chunks of at most 2048 tokens."""
        for i in range(0, len(items), 2048):
            chunk = items[i : i + 2048]
            batch.n_tokens = len(chunk)
            for k, (seq, pos, token, logits) in enumerate(chunk):
                batch.token[k], batch.pos[k], batch.n_seq_id[k] = token, pos, 1
                batch.seq_id[k][0], batch.logits[k] = seq, logits
            if self.lib.llama_decode(self.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")

    def close(self) -> None:
        self.lib.llama_free(self.ctx)
        self.lib.llama_model_free(self.model)


def _member(archive: tarfile.TarFile, suffix: str) -> str:
    name = next(m for m in archive.getnames() if m.endswith(suffix))
    handle = archive.extractfile(name)
    assert handle is not None, name
    return handle.read().decode()


def _check_text(converter: str) -> str:
    line = next(x for x in converter.splitlines() if x.strip().startswith("chktxt = "))
    return ast.literal_eval(line.split("=", 1)[1].strip())


def _hashes(converter: str) -> dict[str, str]:
    body = converter[converter.index("def get_vocab_base_pre") :]
    body = body[: body.index("# Marker: End get_vocab_base_pre")]
    found = re.findall(r'chkhsh == "([0-9a-f]{64})":\s*(?:#[^\n]*\s*)*res = "([^"]+)"', body)
    return dict(found)


def _bpe_branch(vocab: str) -> str:
    start = vocab.index("if (type == LLAMA_VOCAB_TYPE_BPE)")
    return vocab[start : vocab.index("unknown pre-tokenizer type", start)]


def _known(vocab: str) -> list[str]:
    """Every `tokenizer.ggml.pre` value llama.cpp's vocabulary loader accepts for a BPE model."""
    return sorted(set(re.findall(r'tokenizer_pre == "([^"]+)"', _bpe_branch(vocab))))


def _pre_type(vocab: str, name: str) -> str:
    branch = _bpe_branch(vocab)
    after = branch[branch.index(f'tokenizer_pre == "{name}"') :]
    return re.search(r"pre_type = (LLAMA_VOCAB_PRE_TYPE_\w+);", after).group(1)  # type: ignore[union-attr]


def _regexes(vocab: str, pre_type: str) -> list[str]:
    """The regex list llm_tokenizer_bpe splits text with for `pre_type`, as Python strings."""
    start = vocab.index(f"case {pre_type}:", vocab.index("struct llm_tokenizer_bpe"))
    block = vocab[start : vocab.index("break;", start)]
    braces = block[block.index("{") + 1 : block.rindex("}")]
    lines = [x.strip() for x in braces.splitlines() if x.strip() and not x.strip().startswith("//")]
    return [ast.literal_eval(x.rstrip(",")) for x in lines]


def extract_table(source: Path) -> dict[str, object]:
    """The pre-tokenizer table from the source package: check text, hash -> name, names llama.cpp accepts, splits."""
    with tarfile.open(source) as archive:
        converter = _member(archive, "vendor/llama.cpp/conversion/base.py")
        vocab = _member(archive, "vendor/llama.cpp/src/llama-vocab.cpp")
    return {
        "source": f"llama.cpp as vendored in llama-cpp-python {VERSION} (PyPI sdist), MIT licence: check_text and "
        "hashes from conversion/base.py get_vocab_base_pre, known and splits from src/llama-vocab.cpp",
        "check_text": _check_text(converter),
        "hashes": _hashes(converter),
        "known": _known(vocab),
        "splits": {name: _regexes(vocab, _pre_type(vocab, name)) for name in SPLIT_NAMES},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-table", action="store_true", help="write the vendored pre-tokenizer table")
    parser.add_argument("--check-table", action="store_true", help="compare the vendored table with the sdist's")
    parser.add_argument("--build", action="store_true", help="build llama-cpp-python into the cache")
    args = parser.parse_args()
    if args.build:
        print(ensure_llama_cpp().__file__)
    table = extract_table(sdist())
    unknown = sorted(set(table["hashes"].values()) - set(table["known"]))  # type: ignore[union-attr, arg-type]
    if unknown:
        print(f"converter names llama.cpp's loader does not accept: {unknown}")
    if args.write_table:
        TABLE.write_text(json.dumps(table, indent=1, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
        print(f"wrote {TABLE}: {len(table['hashes'])} hashes, {len(table['known'])} known names")  # type: ignore[arg-type]
    if args.check_table and json.loads(TABLE.read_text(encoding="utf-8")) != table:
        print(f"{TABLE} differs from llama-cpp-python {VERSION}'s sources: run with --write-table")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
