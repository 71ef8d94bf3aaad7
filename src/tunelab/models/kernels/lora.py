"""A leaner LoRA forward for training: the same maths as peft's `lora.Linear`, fewer passes over wide tensors.

peft computes `base(x) + B(A(x)) * scaling` as four full-width steps: the base product, B's product into a new
tensor, a multiplication by the scale over that tensor and an addition, and the backward walks each of them
again. On a CPU the full-width tensors are what costs (SmolLM2-135M's MLP outputs are 1,536 wide: one scalar
multiplication over a 510-token piece took 1.3 ms in a step, as long as the base product that made it). Here:
- the scale is folded into A (a rank x width weight), so no full-width multiplication is made, forward or back;
- B's product and the addition of the base output are one `addmm`, so one full-width tensor is made, not three;
- the layers that read one input (q/k/v projections, gate/up projections) make their A products as one matrix
  product, `x @ [A_q; A_k; A_v]^T`: one pass over x instead of three, forward and backward.

`use_fast_lora_(model)` swaps peft's `lora.Linear` modules over plain `nn.Linear` layers for `FastLoraLinear`, a
subclass that takes over the same parameters, children and peft state: parameter names, the state dict, the saved
adapter, merging and peft's adapter switches are unchanged. Its fast forward runs only where it computes what
peft's would (one active plain LoRA adapter without dropout, not merged, not disabled, under autocast or in one
dtype); anything else (DoRA, dropout, several adapters, mixed-batch adapter names, a disabled adapter) is peft's
own forward.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as PeftLoraLinear
from torch import nn

SIBLINGS = ({"q_proj", "k_proj", "v_proj"}, {"gate_proj", "up_proj"})
"""Names of linear layers that read the same input in the families' attention and MLP blocks."""


class FastLoraLinear(PeftLoraLinear):
    """peft's LoRA linear layer with the fast training forward described in the module docstring."""

    siblings: SiblingGroup | None

    @classmethod
    def adopt(cls, layer: PeftLoraLinear) -> FastLoraLinear:
        """A `FastLoraLinear` holding `layer`'s parameters, children and peft state (shared, not copied)."""
        fast = cls.__new__(cls)
        vars(fast).update(vars(layer))
        fast.siblings = None
        return fast

    def fast_adapter(self, x: torch.Tensor) -> str | None:
        """The adapter the fast forward runs for input `x`, or None where peft's own forward must run."""
        if self.disable_adapters or self.merged or len(self.active_adapters) != 1:
            return None
        name = self.active_adapters[0]
        if name not in self.lora_A or name in self.lora_variant or not isinstance(self.lora_dropout[name], nn.Identity):
            return None
        a, b = self.lora_A[name], self.lora_B[name]
        if not isinstance(a, nn.Linear) or not isinstance(b, nn.Linear) or a.bias is not None or b.bias is not None:
            return None
        # Outside autocast peft adds an update of A's dtype to the base's output; one dtype throughout is the same.
        base = self.get_base_layer()
        same = isinstance(base, nn.Linear) and x.dtype == a.weight.dtype == base.weight.dtype
        return name if same or torch.is_autocast_enabled(x.device.type) else None

    def scaled_a(self, name: str) -> torch.Tensor:
        """A's weight times the adapter's scale (rank x in): the scale applied where the tensor is smallest."""
        return cast(nn.Linear, self.lora_A[name]).weight * self.scaling[name]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = None if args or kwargs else self.fast_adapter(x)
        if name is None:
            return super().forward(x, *args, **kwargs)
        group = self.siblings
        low = group.lora_input(self, x, name) if group is not None else F.linear(x, self.scaled_a(name))
        result = cast(nn.Linear, self.get_base_layer())(x)  # an nn.Linear: `fast_adapter` checked
        # The base output and B's product in one `addmm`; in place into the base output measured slower, as the
        # backward of an in-place update of a view copies the full-width gradient.
        flat = torch.addmm(
            result.view(-1, result.shape[-1]),
            low.reshape(-1, low.shape[-1]).to(result.dtype),
            cast(nn.Linear, self.lora_B[name]).weight.to(result.dtype).t(),
        )
        return flat.view(result.shape)


class SiblingGroup:
    """LoRA layers that read the same input: the first one called makes every member's A product in one matrix
    product and keeps the others' parts until they are called with that same input tensor."""

    def __init__(self, members: list[FastLoraLinear]) -> None:
        self.members = members
        self._input: torch.Tensor | None = None
        self._pending: dict[int, torch.Tensor] = {}

    def lora_input(self, member: FastLoraLinear, x: torch.Tensor, name: str) -> torch.Tensor:
        """`x @ (scale * A)^T` for `member`'s adapter `name`, from the shared product where it can be."""
        key = id(member)
        if x is self._input and key in self._pending:
            low = self._pending.pop(key)
            if not self._pending:
                self._input = None
            return low
        if not all(m is member or m.fast_adapter(x) == name for m in self.members):
            return F.linear(x, member.scaled_a(name))
        weights = [m.scaled_a(name) for m in self.members]
        parts = F.linear(x, torch.cat(weights)).split([w.shape[0] for w in weights], dim=-1)
        self._pending = {id(m): p for m, p in zip(self.members, parts, strict=True) if m is not member}
        self._input = x
        return parts[self.members.index(member)]


def use_fast_lora_(model: nn.Module) -> tuple[int, int]:
    """Swap peft's LoRA layers over `nn.Linear` in `model` for `FastLoraLinear` (in place) and group the siblings
    among them; returns (layers swapped, sibling groups)."""
    swapped, groups = 0, 0
    for parent in list(model.modules()):
        fast: dict[str, FastLoraLinear] = {}
        for child_name, child in list(parent.named_children()):
            if type(child) is PeftLoraLinear and isinstance(child.get_base_layer(), nn.Linear):
                fast[child_name] = FastLoraLinear.adopt(child)
                setattr(parent, child_name, fast[child_name])
                swapped += 1
            elif isinstance(child, FastLoraLinear):
                fast[child_name] = child
        for names in SIBLINGS:
            members = [fast[n] for n in sorted(names) if n in fast]
            if len(members) > 1 and len({m.in_features for m in members}) == 1 and members[0].siblings is None:
                group = SiblingGroup(members)
                for m in members:
                    m.siblings = group
                groups += 1
    return swapped, groups
