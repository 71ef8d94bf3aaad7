"""Mixture-of-experts routing while training: the load-balancing auxiliary loss, the router z-loss, and how evenly
each layer's experts are used.

Mixtral, Qwen2/3-MoE and OLMoE route every token through a top-k router (`*TopKRouter`: logits over the experts,
the chosen experts' indices). A forward hook on each router keeps its logits and choices for the duration of one
training-loss call (registered and removed around it, as NEFTune's noise is), so evaluation and generation run the
plain model. From them:

- the load-balancing loss of the Switch Transformer (Fedus et al., 2022), E · Σ_e f_e · P_e, where f_e is the
  number of times expert e was among a token's top k per token and P_e its mean router probability (k when
  perfectly even, up to E when every token goes to the same k experts), computed by transformers' own
  `load_balancing_loss_func` with padding excluded. By default it is taken per layer and averaged, as the Switch
  Transformer applies it to every MoE layer (`training.router_aux_loss_scope: layer`); `pooled` is what the
  models add to their own loss with `output_router_logits`: f and P pooled over the layers before the product,
  which an even pooled distribution satisfies even when every layer has collapsed onto different experts
  (benchmarks/results/moe_routing.md measures both). Its weight is `training.router_aux_loss_coef`, by default the
  model config's `router_aux_loss_coef`;
- the router z-loss of ST-MoE (Zoph et al., 2022), the mean over tokens and layers of logsumexp(logits)², which
  keeps router logits small (`training.router_z_loss_coef`, off by default);
- expert utilisation: per layer, the share of assignments its busiest expert received times the number of experts
  (`moe_load/L<i>`: 1.0 is perfectly even; with top-k routing it is at most E/k, one expert in every token's
  choice), over the steps since the last
  metrics line, with the worst layer as `moe_load_max`.

The terms are means per token; they are added to the objective's summed loss scaled by its count, so the loop's
division by the step's count leaves coef · term in the step's loss.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import torch
from torch import nn
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from tunelab.core.errors import ConfigError
from tunelab.core.types import Batch, LossParts
from tunelab.objectives.base import Objective

ROUTER_SUFFIX = "TopKRouter"


def routers(model: nn.Module) -> list[nn.Module]:
    """The model's top-k routers in layer order (none for a dense model)."""
    return [m for m in model.modules() if type(m).__name__.endswith(ROUTER_SUFFIX) and hasattr(m, "num_experts")]


def model_aux_coef(model: nn.Module) -> float:
    """The model config's load-balancing coefficient (0 when it names none)."""
    config = getattr(model, "config", None)
    return float(getattr(config, "router_aux_loss_coef", 0.0) or 0.0)


@dataclasses.dataclass
class Routing:
    """One training-loss call's router outputs, layer by layer."""

    logits: list[torch.Tensor] = dataclasses.field(default_factory=list)
    chosen: list[torch.Tensor] = dataclasses.field(default_factory=list)


class RouterLosses:
    """The loss wrapper that adds the routing terms and keeps the utilisation counts."""

    def __init__(self, model: nn.Module, aux_coef: float, z_coef: float, scope: str = "layer") -> None:
        self.routers = routers(model)
        self.aux_coef, self.z_coef, self.scope = aux_coef, z_coef, scope
        self.top_k = int(getattr(self.routers[0], "top_k", 1))
        self.num_experts = int(getattr(self.routers[0], "num_experts", 0))
        self.counts = torch.zeros(len(self.routers), self.num_experts, dtype=torch.float64)
        self.last: dict[str, float] = {}

    def _hook(self, store: Routing):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            store.logits.append(output[0])
            store.chosen.append(output[2])

        return hook

    def terms(self, routing: Routing, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(load-balancing loss, z-loss) of one forward; `mask` (batch x sequence) leaves padding out."""
        tokens = routing.logits[0].shape[0]
        flat = mask.reshape(-1) if mask is not None and mask.numel() == tokens else None
        groups = [routing.logits] if self.scope == "pooled" else [[logits] for logits in routing.logits]
        terms = []
        for group in groups:
            layers = typing.cast(tuple[torch.Tensor], tuple(group))  # the function takes any number of layers
            term = load_balancing_loss_func(layers, self.num_experts, self.top_k, flat)
            terms.append(term if isinstance(term, torch.Tensor) else torch.zeros((), device=group[0].device))
        aux = torch.stack(terms).mean()
        keep = flat.bool() if flat is not None else None
        z_terms = []
        for logits in routing.logits:
            z = torch.logsumexp(logits.float(), dim=-1).square()
            z_terms.append(z[keep].mean() if keep is not None else z.mean())
        with torch.no_grad():
            for layer, chosen in enumerate(routing.chosen):
                picked = chosen[keep] if keep is not None else chosen
                self.counts[layer] += torch.bincount(picked.reshape(-1).cpu(), minlength=self.num_experts).double()
        return aux.float(), torch.stack(z_terms).mean()

    def wrap(self, objective: Objective[Any, Any]) -> Objective[Any, Any]:
        inner = objective.loss

        def loss(model: nn.Module, batch: Batch, ctx: Any) -> LossParts:
            if not model.training:
                return inner(model, batch, ctx)
            routing = Routing()
            handles = [r.register_forward_hook(self._hook(routing)) for r in self.routers]
            try:
                parts = inner(model, batch, ctx)
            finally:
                for handle in handles:
                    handle.remove()
            if not routing.logits:  # an objective that did not run the routed body (should not happen)
                return parts
            aux, z = self.terms(routing, batch.get("attention_mask"))
            self.last = {"moe_aux_loss": float(aux.detach())}
            if self.z_coef:
                self.last["moe_z_loss"] = float(z.detach())
            extra = self.aux_coef * aux + self.z_coef * z
            return dataclasses.replace(parts, loss_sum=parts.loss_sum + extra * parts.count.detach())

        return dataclasses.replace(objective, loss=loss)

    def metrics(self) -> dict[str, float]:
        """The last step's routing terms and each layer's load since the previous call (then reset)."""
        out = dict(self.last)
        totals = self.counts.sum(dim=1, keepdim=True)
        if float(totals.min()) > 0:
            load = (self.counts / totals).max(dim=1).values * self.num_experts
            out.update({f"moe_load/L{i}": round(float(v), 4) for i, v in enumerate(load)})
            out["moe_load_max"] = round(float(load.max()), 4)
        self.counts.zero_()
        return out


def router_losses(model: nn.Module, aux_coef: float | None, z_coef: float, scope: str = "layer") -> RouterLosses | None:
    """The routing wrapper for a mixture-of-experts model (None for a dense one); asking a dense model for router
    losses is a `ConfigError`."""
    if not routers(model):
        if aux_coef or z_coef:
            raise ConfigError(
                f"training.router_aux_loss_coef / router_z_loss_coef apply to mixture-of-experts models (Mixtral, "
                f"Qwen-MoE, OLMoE); {type(model).__name__} has no router. Remove them from the config."
            )
        return None
    return RouterLosses(model, model_aux_coef(model) if aux_coef is None else aux_coef, z_coef, scope)
