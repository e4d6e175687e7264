"""``Muon``: one optimizer object that runs ``torch.optim.Muon`` on hidden matrices and
``torch.optim.AdamW`` on everything else (embedding tables, biases, norms, first/last layers).

Lightning's automatic optimization wants one optimizer and LR schedulers want to see every group, so
the hybrid is a single ``torch.optim.Optimizer`` whose ``param_groups`` cover all parameters; each
group carries ``use_muon``. Stepping hands the Muon groups to an inner ``torch.optim.Muon`` and the
others to an inner ``torch.optim.AdamW``; both share *the same group dicts and state dict* as the
outer object, so a scheduler's change to ``group["lr"]`` reaches the update, and
``state_dict``/``load_state_dict`` are the ordinary torch ones.

Routing (never by ``ndim`` alone, since embedding tables are 2-D): a parameter goes to Muon when it
is the ``weight`` of an ``nn.Linear`` that is not excluded (an output layer with ``last_layer_adamw``,
an input layer with ``first_layer_adamw``, or a name matching ``adamw_names``), or when its qualified
name matches ``muon_names``. Everything else, in particular ``nn.Embedding``/``nn.EmbeddingBag``
tables, norms, biases and 2-D parameters of other modules, goes to AdamW.

Output and input layers come from the module tree, not from registration order (no forward pass).
In an ``nn.Sequential`` data flows in order: the ``nn.Linear`` layers of its first child that holds
any read its input, those of its last such child produce its output, unless an activation or
normalization layer (:data:`HIDDEN_ACTIVATIONS`: ReLU, GELU, SiLU, Tanh, LayerNorm, BatchNorm, ...)
follows that child: then the output is a hidden representation (a DLRM bottom MLP) and has no output
layer. In any other module (a custom ``nn.Module``, ``nn.ModuleDict``, ``nn.ModuleList``) the order of
the children says nothing about the forward, so children are linked by width: a child whose output
is ``w`` wide (hidden or not) feeds a sibling whose input layer has ``in_features == w``. The output
layers of a module are its children's output layers that feed no sibling; its input layers, its
children's input layers that no sibling feeds. The model's output layers are thus the last layer of
every task tower and head, a head registered before the hidden layers, and a lone ``nn.Linear``; its
input layers, those that read the data or a non-Linear interaction (a DLRM's bottom and top MLPs'
first layers). The rule is conservative: a layer whose reader it cannot see (one that feeds a
non-Linear interaction without a trailing activation) counts as an output and goes to AdamW, and a
coincidence of widths (an autoencoder's output width equal to its input width) can hide an output
layer; the ``adamw_names`` / ``muon_names`` regexes override it either way.

Momentum schedules (``OneCycleLR`` / ``CyclicLR`` with ``cycle_momentum=True``) drive the Muon groups'
``momentum``, as for ``torch.optim.Muon``: ``defaults`` are the Muon groups' (``adamw_defaults`` the
AdamW groups'), and the AdamW groups keep their ``betas``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning_recsys.optim import Muon
    >>> model = nn.Sequential(nn.Embedding(100, 16), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    >>> opt = Muon.from_module(model, lr=0.02, adamw_lr=3e-3)
    >>> [(g["use_muon"], len(g["params"])) for g in opt.param_groups]
    [(True, 1), (False, 4)]

From a LightningCLI YAML (the module's ``configure_optimizers`` passes
``module_parameters(self)``, a plain parameter list that also carries the module)::

    model:
      optimizer:
        class_path: lightning_recsys.optim.Muon
        init_args: {lr: 0.02, adamw_lr: 0.003}
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT

from .._validation import ConfigurationError, check_choice, check_int, check_number
from ._routing import check_real, group_tensors, module_of, owned_parameters

__all__ = ["HIDDEN_ACTIVATIONS", "Muon", "route_muon"]

#: Modules that, after a Linear in an ``nn.Sequential``, make its output a hidden representation.
HIDDEN_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Hardswish, nn.Softplus, nn.Tanh, nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.BatchNorm1d,
)  # fmt: skip


def _compile(pattern: str | None, name: str) -> re.Pattern | None:
    if pattern is None:
        return None
    if not isinstance(pattern, str):
        raise TypeError(f"{name} must be a regex string or None, got {type(pattern).__name__}")
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ValueError(f"{name} is not a valid regex: {pattern!r} ({err})") from err


class _Ends(NamedTuple):
    """How a module connects to its siblings (see the module docstring)."""

    inputs: list[nn.Linear]  # layers that may read the module's input
    outputs: list[nn.Linear]  # layers whose output may be the module's output
    widths: set[int]  # widths the module's output may have (a hidden output has no output layer)
    held: bool  # the module holds an nn.Linear


def _ends(module: nn.Module) -> _Ends:
    """The input and output layers of ``module`` by the module docstring's rule."""
    if isinstance(module, nn.Linear):
        return _Ends([module], [module], {module.out_features}, True)
    children = list(module.children())
    parts = [_ends(c) for c in children]
    held = [i for i, part in enumerate(parts) if part.held]
    if not held:
        return _Ends([], [], set(), False)
    if isinstance(module, nn.Sequential):
        first, last = parts[held[0]], parts[held[-1]]
        hidden = any(isinstance(c, HIDDEN_ACTIVATIONS) for c in children[held[-1] + 1 :])
        return _Ends(first.inputs, [] if hidden else last.outputs, last.widths, True)
    inputs, outputs, widths = [], [], set()
    for i in held:
        siblings = [parts[j] for j in held if j != i]
        read = {layer.in_features for part in siblings for layer in part.inputs}
        made = set().union(*(part.widths for part in siblings))
        inputs += [layer for layer in parts[i].inputs if layer.in_features not in made]
        outputs += [layer for layer in parts[i].outputs if layer.out_features not in read]
        widths |= parts[i].widths - read
    return _Ends(inputs, outputs, widths, True)


def route_muon(
    module: nn.Module,
    adamw_names: str | None = None,
    muon_names: str | None = None,
    first_layer_adamw: bool = False,
    last_layer_adamw: bool = True,
) -> dict[str, bool]:
    """``{qualified parameter name: goes to Muon}`` by the rules in the module docstring.

    ``last_layer_adamw`` / ``first_layer_adamw``: send the model's output / input layers (found by
    structure, see the module docstring) to AdamW. Regexes are matched with ``re.search`` against
    names such as ``"top_mlp.0.weight"``; ``muon_names`` wins over everything else.

    Example:
        >>> from torch import nn
        >>> class TwoTasks(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.heads = nn.ModuleDict({"click": nn.Linear(8, 1), "buy": nn.Linear(8, 1)})
        ...         self.hidden = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        >>> [name for name, to_muon in route_muon(TwoTasks()).items() if to_muon]  # both heads -> AdamW
        ['hidden.0.weight']
    """
    adamw_re, muon_re = _compile(adamw_names, "adamw_names"), _compile(muon_names, "muon_names")
    inputs, outputs, _, _ = _ends(module)
    excluded = {id(m) for m in (outputs if last_layer_adamw else []) + (inputs if first_layer_adamw else [])}
    routes = {}
    for name, p, owner in owned_parameters(module):
        if muon_re is not None and muon_re.search(name):
            if p.ndim != 2:
                raise ValueError(
                    f"muon_names={muon_names!r} matches {name!r} of shape {tuple(p.shape)}; Muon takes 2-D matrices only"
                )
            routes[name] = True
            continue
        # embedding tables, norms and other modules' parameters are never nn.Linear weights
        hidden_linear = isinstance(owner, nn.Linear) and p is owner.weight and id(owner) not in excluded
        routes[name] = bool(hidden_linear and not (adamw_re is not None and adamw_re.search(name)))
    return routes


class Muon(Optimizer):
    """Hybrid Muon: ``torch.optim.Muon`` for hidden matrices, ``torch.optim.AdamW`` for the rest.

    Args:
        params: an ``nn.Module`` or ``module_parameters(model)`` (routed automatically, see
            :func:`route_muon`), or param groups that each say ``use_muon: True/False`` (Muon groups
            must hold 2-D tensors only). A bare parameter list is refused: it cannot be routed.
        lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn: the
            Muon groups' settings, as ``torch.optim.Muon`` (same defaults).
        adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay: the AdamW groups' settings, as
            ``torch.optim.AdamW`` (same defaults).
        adamw_names, muon_names, first_layer_adamw, last_layer_adamw: routing options (only used
            when a module is given; see the module docstring and :func:`route_muon`).

    ``defaults`` holds the Muon groups' options (as ``torch.optim.Muon``'s, so momentum schedulers
    find ``momentum``), ``adamw_defaults`` the AdamW groups'. Parameters of any floating dtype step as
    with the two torch optimizers (state in the parameter's dtype).

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        >>> opt = Muon(model, lr=0.02, adamw_lr=1e-3)
        >>> sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[0.02, 1e-3], total_steps=100)
    """

    def __init__(
        self,
        params: ParamsT | nn.Module,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        adamw_lr: float = 1e-3,
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
        adamw_weight_decay: float = 0.01,
        adamw_names: str | None = None,
        muon_names: str | None = None,
        first_layer_adamw: bool = False,
        last_layer_adamw: bool = True,
    ) -> None:
        for name, val in (("lr", lr), ("weight_decay", weight_decay), ("momentum", momentum),
                          ("adamw_lr", adamw_lr), ("adamw_eps", adamw_eps),
                          ("adamw_weight_decay", adamw_weight_decay), ("eps", eps)):  # fmt: skip
            check_number(name, val, low=0.0)
        check_int("ns_steps", ns_steps, low=1, high=99)
        if len(tuple(ns_coefficients)) != 3:
            raise ConfigurationError(f"ns_coefficients must be 3 numbers (a, b, c), got {ns_coefficients!r}")
        check_choice("adjust_lr_fn", adjust_lr_fn, (None, "original", "match_rms_adamw"))
        betas = tuple(adamw_betas)
        if len(betas) != 2:
            raise ConfigurationError(f"adamw_betas must be two numbers in [0, 1), got {adamw_betas!r}")
        for i, b in enumerate(betas):
            check_number(f"adamw_betas[{i}]", b, low=0.0, high=1.0, high_open=True)
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "nesterov": nesterov,
                    "ns_coefficients": tuple(ns_coefficients), "eps": eps, "ns_steps": ns_steps,
                    "adjust_lr_fn": adjust_lr_fn}  # fmt: skip
        self.adamw_defaults = {"lr": adamw_lr, "betas": betas, "eps": adamw_eps, "weight_decay": adamw_weight_decay,
                               "amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
                               "differentiable": False, "fused": None, "decoupled_weight_decay": True}  # fmt: skip
        module = module_of(params)
        if module is not None:
            routes = route_muon(module, adamw_names, muon_names, first_layer_adamw, last_layer_adamw)
            named = {name: p for name, p, _ in owned_parameters(module)}
            params = [
                {"params": [named[n] for n, m in routes.items() if m == kind], "use_muon": kind} for kind in (True, False)
            ]
            params = [g for g in params if g["params"]]
        else:
            params = list(params)
            if not params or not all(isinstance(g, dict) for g in params):
                raise TypeError(
                    "Muon needs to know which parameters are hidden matrices: pass the module "
                    "(Muon(model) / Muon.from_module(model) / module_parameters(model)) or param groups "
                    "with 'use_muon': True/False; a bare parameter list cannot be routed (embedding "
                    "tables are 2-D too)"
                )
        self._inner: dict[bool, Optimizer | None] = {True: None, False: None}
        super().__init__(params, defaults)

    @classmethod
    def from_module(cls, module: nn.Module, **kwargs: Any) -> Muon:
        """Route ``module``'s parameters (see :func:`route_muon`) and build the hybrid."""
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        return cls(module, **kwargs)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; it must say ``use_muon`` and gets that kind's defaults (``defaults`` for Muon
        groups, ``adamw_defaults`` for AdamW groups).

        Example:
            >>> from torch import nn
            >>> opt = Muon(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)))
            >>> opt.add_param_group({"params": nn.LayerNorm(8).parameters(), "use_muon": False, "lr": 1e-4})
            >>> opt.param_groups[-1]["betas"], opt.param_groups[-1]["lr"]
            ((0.9, 0.999), 0.0001)
        """
        if "use_muon" not in param_group or not isinstance(param_group["use_muon"], bool):
            raise ValueError(f"every Muon param group needs 'use_muon': True or False, got keys {sorted(param_group)}")
        kind = param_group["use_muon"]
        own_keys = set(param_group)
        if not kind:
            for key, value in self.adamw_defaults.items():
                param_group.setdefault(key, value)
        tensors = group_tensors(param_group)
        check_real(tensors, "Muon")
        if kind:
            for p in tensors:
                if p.ndim != 2:
                    raise ValueError(
                        f"a use_muon=True group holds a parameter of shape {tuple(p.shape)}; Muon takes 2-D "
                        "matrices only (send biases, norms and other tensors to a use_muon=False group)"
                    )
        super().add_param_group(param_group)
        if not kind:  # torch filled in the Muon defaults too: an AdamW group keeps only its own options
            for key in self.defaults.keys() - self.adamw_defaults.keys() - own_keys:
                del param_group[key]
        self._inner = {True: None, False: None}

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "adamw_defaults": self.adamw_defaults}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._inner = {True: None, False: None}

    def _inner_optimizer(self, kind: bool) -> Optimizer | None:
        """The inner torch optimizer of ``kind``, re-linked to the current groups and state."""
        groups = [g for g in self.param_groups if g["use_muon"] is kind]
        if not groups:
            return None
        opt = self._inner[kind]
        if opt is None:
            opt = (torch.optim.Muon if kind else torch.optim.AdamW)(groups)
            self._inner[kind] = opt
        opt.param_groups = groups  # the same dicts: scheduler changes reach the update
        opt.state = self.state  # one state: state_dict/load_state_dict see everything
        return opt

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        """Performs a single optimization step (Muon groups, then AdamW groups)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for kind in (True, False):
            opt = self._inner_optimizer(kind)
            if opt is not None:
                opt.step()
        return loss
