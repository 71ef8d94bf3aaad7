"""The merge recipe: mergekit's YAML layout and parameter names, plus three tunelab keys (seed, output, rank).

```yaml
merge_method: ties            # linear | task_arithmetic | ties | dare_ties | dare_linear
base_model: smollm2-135m      # any model source; inferred from run folders / adapters when left out
models:
  - model: runs/task-a        # run folder, HF folder, PEFT LoRA adapter, embedded name, or "BASE+ADAPTER"
    parameters: {weight: 0.5, density: 0.5}
  - model: runs/task-b
    parameters: {weight: 0.5, density: 0.5}
parameters: {normalize: true, lambda: 1.0}
dtype: bfloat16
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator

from tunelab.core.errors import ConfigError, did_you_mean
from tunelab.core.schema import Section, explain, read_yaml_mapping
from tunelab.export.merging.tensors import MERGE_METHODS

DTYPES = ("float32", "bfloat16", "float16")


class ModelParameters(Section):
    weight: float | None = None
    """This model's weight (mergekit's per-model `weight`); default: the global `parameters.weight`, else 1."""
    density: float | None = Field(default=None, gt=0, le=1)
    """Fraction of its task vector kept by TIES / DARE; default: the global `parameters.density`, else 1."""


class ModelEntry(Section):
    model: str
    """A run folder, HF model folder, PEFT LoRA adapter folder, embedded model name, or mergekit's 'BASE+ADAPTER'."""
    parameters: ModelParameters = ModelParameters()
    """Per-model parameters (weight, density)."""


class GlobalParameters(Section):
    model_config = Section.model_config | ConfigDict(populate_by_name=True)

    normalize: bool | None = None
    """Divide by the sum of the weights (TIES: of the weights kept at each entry). Default as in mergekit: on for
    linear and ties, off for task_arithmetic and the DARE methods."""
    lambda_: float = Field(default=1.0, alias="lambda")
    """Scale of the merged task vector before it is added to the base (mergekit's `lambda`)."""
    rescale: bool | None = None
    """DARE: rescale the kept entries to the task vector's L1 norm (default on for dare_*)."""
    weight: float | None = None
    """Default weight for models that give none."""
    density: float | None = Field(default=None, gt=0, le=1)
    """Default density for models that give none."""
    int8_mask: bool = False
    """Accepted so mergekit recipes load; it only saves memory in mergekit and changes nothing here."""


class MergeConfig(Section):
    merge_method: str
    """linear, task_arithmetic, ties, dare_ties or dare_linear."""
    base_model: str | None = None
    """The common base of the models (needed by every method but linear). Inferred from run folders and
    adapters when they agree."""
    models: list[ModelEntry] = Field(min_length=1)
    """The models to merge. An entry equal to base_model is skipped by task-vector methods (as in mergekit)."""
    parameters: GlobalParameters = GlobalParameters()
    """Global parameters (normalize, lambda, rescale, default weight/density)."""
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """Output weight dtype; default: the base model's."""
    seed: int = 0
    """Seed of DARE's random masks (tunelab; mergekit uses an unseeded RNG)."""
    output: Literal["auto", "model", "adapter"] = "auto"
    """`model`: a standalone HF folder. `adapter`: a PEFT LoRA adapter (all inputs LoRA adapters; exact for
    linear/task_arithmetic, needs `rank` for ties/dare). `auto`: adapter when that is exact, else model."""
    rank: int | None = Field(default=None, ge=1)
    """Rank of the truncated SVD that turns a TIES/DARE-merged ΔW back into a LoRA adapter (output: adapter)."""

    @field_validator("merge_method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in MERGE_METHODS:
            raise ValueError(f"unknown method{did_you_mean(value, MERGE_METHODS)} Valid: {', '.join(MERGE_METHODS)}")
        return value

    def weight(self, entry: ModelEntry) -> float:
        chosen = entry.parameters.weight if entry.parameters.weight is not None else self.parameters.weight
        return 1.0 if chosen is None else chosen

    def density(self, entry: ModelEntry) -> float:
        chosen = entry.parameters.density if entry.parameters.density is not None else self.parameters.density
        return 1.0 if chosen is None else chosen

    def normalize(self) -> bool:
        given = self.parameters.normalize
        return MERGE_METHODS[self.merge_method].default_normalize if given is None else given

    def rescale(self) -> bool:
        given = self.parameters.rescale
        return MERGE_METHODS[self.merge_method].default_rescale if given is None else given


def parse_merge_config(
    raw: dict[str, Any], where: str = "command line", lines: dict[str, int] | None = None
) -> MergeConfig:
    """Validate a recipe dict; problems become one ConfigError naming the key (and line) and the fix."""
    try:
        return MergeConfig.model_validate(raw)
    except ValidationError as exc:
        problems = explain(exc, where, lines or {}, MergeConfig)
        raise ConfigError(
            "The merge recipe has a problem: " + " ".join(problems) + " Fix the recipe (keys follow mergekit's)."
        ) from None


def load_merge_config(path: str | Path) -> MergeConfig:
    """Read a mergekit-style YAML recipe."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Merge recipe '{path}' does not exist. Give a YAML file or --method/--model flags.")
    raw, lines = read_yaml_mapping(path, "merge_method, base_model, models, ...")
    return parse_merge_config(raw, str(path), lines)
