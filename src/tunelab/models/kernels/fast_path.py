"""Apply the fast path (fused norms and MLPs, short-row attention) as `training.fused_modules` says.

`auto` takes the parts a model's modules allow and reports the others with the family table's reason; `true`
asks for all of them and refuses a model that cannot take one, naming the part and why; `false` leaves the model
as transformers built it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from tunelab.core.errors import ConfigError
from tunelab.models.families import PARTS, Part, family_of
from tunelab.models.kernels.attention import use_short_attention_
from tunelab.models.kernels.fused import FusedGatedMLP, FusedMergedGatedMLP, FusedRMSNorm, fuse_modules_

FastPathMode = Literal["auto"] | bool


@dataclass(frozen=True)
class FastPath:
    """Which fast-path parts a model took, and why it did not take the others."""

    used: tuple[Part, ...]
    gaps: str
    """Empty when every part is used."""

    def describe(self) -> str:
        """One line for the run's output: the parts used, and the reason for the rest."""
        used = ", ".join(PARTS[p] for p in self.used) or "none"
        return f"fast path: {used}" + (f" (not used: {self.gaps})" if self.gaps else "")


def parts_used(model: nn.Module, attention: bool) -> tuple[Part, ...]:
    """The parts present in `model` after `fuse_modules_` (and `use_short_attention_`, whose result is given)."""
    kinds = {type(m) for m in model.modules()}
    found: list[Part] = []
    if FusedRMSNorm in kinds:
        found.append("norm")
    if kinds & {FusedGatedMLP, FusedMergedGatedMLP}:
        found.append("mlp")
    if attention:
        found.append("attention")
    return tuple(found)


def gaps_of(model: nn.Module, used: tuple[Part, ...]) -> str:
    """Why the parts missing from `used` are missing: the family table's reason, or that the family is unknown."""
    missing = [p for p in PARTS if p not in used]
    if not missing:
        return ""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", "?")
    family = family_of(model_type)
    if family is not None and set(family.fast_path) == set(used):
        return family.fast_path_gaps
    if family is not None:
        return f"{', '.join(missing)}: this {family.name} model's modules differ from the family's usual ones"
    return f"{', '.join(missing)}: '{model_type}' models are not in tunelab's family table (models/families.py)"


def apply_fast_path_(model: nn.Module, mode: FastPathMode) -> FastPath:
    """Swap in the fast-path modules and attention `mode` asks for (in place); what was used and why not the rest.

    Run before a method wraps the linear layers: parameter names do not change."""
    if mode is False:
        return FastPath((), "training.fused_modules is false")
    fuse_modules_(model)
    used = parts_used(model, use_short_attention_(model))
    path = FastPath(used, gaps_of(model, used))
    if mode is True and path.gaps:
        raise ConfigError(
            f"training.fused_modules: true asks for every fast-path part, and this model cannot take them all: "
            f"{path.gaps}. Set training.fused_modules to auto (the parts it can take) or false."
        )
    return path
