"""Named layer taps: read any intermediate activation, or run the rest of the network from it.

Both defences need the same two moves on a classifier F:

* ``features(x, tap)``: the activation O_N of layer N (DLD's encoder input, LAD's phi(x));
* ``forward_from(h, tap)``: the logits of the layers after N applied to an activation h
  (LAD's f_p(z'), DLD's F with a decoded activation fed back in).

``forward_with(x, tap, transform)`` is the composition (F with A_N inserted at layer N).
Models we define are :class:`StagedModel` (an ordered dict of stages, cheap and exact); a user's own
``nn.Module`` is wrapped by :class:`HookedModel`, which names submodules and uses forward hooks.
A StagedModel also taps inside a ``nn.Sequential`` stage: ``"layer1.1"`` is the output of that stage's child 1
(for ``dld_mnist``, layer 1's ReLU before its max-pool), the name PyTorch gives that submodule.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn

Transform = Callable[[torch.Tensor], torch.Tensor]


class TappedModel(nn.Module):
    """A classifier mapping (N, C, H, W) pixels in [0, 1] to (N, K) logits, with named taps."""

    input_shape: tuple[int, int, int]
    num_classes: int
    arch: str                       # set by `create_model` (the registry name, saved in checkpoints)
    arch_kwargs: dict[str, Any]     # set by `create_model`; absent on a model built directly

    @property
    def tap_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def features(self, x: torch.Tensor, tap: str) -> torch.Tensor:
        """Output of layer `tap` for input x."""
        return self.intermediates(x, [tap])[tap]

    def intermediates(self, x: torch.Tensor, taps: Iterable[str]) -> dict[str, torch.Tensor]:
        """Outputs of several layers in one forward pass, keyed by tap name."""
        raise NotImplementedError

    def forward_from(self, h: torch.Tensor, tap: str) -> torch.Tensor:
        """Logits of the layers after `tap`, applied to an activation h shaped like that tap's output."""
        raise NotImplementedError

    def forward_with(self, x: torch.Tensor, tap: str, transform: Transform) -> torch.Tensor:
        """Logits of F with layer `tap`'s output replaced by transform(output)."""
        return self.forward_from(transform(self.features(x, tap)), tap)

    def check_tap(self, tap: str) -> None:
        """Raise a clear error for an unknown tap name."""
        if tap not in self.tap_names:
            raise KeyError(f"unknown tap {tap!r}; this model has {list(self.tap_names)}")

    def deepest_tap(self, taps: Iterable[str]) -> str:
        """The tap a forward pass reaches last: where `forward_from` resumes after one pass through `taps`."""
        wanted = list(taps)
        for tap in wanted:
            self.check_tap(tap)
        if not wanted:
            raise ValueError("deepest_tap needs at least one tap")
        return max(wanted, key=self._tap_position)

    def _tap_position(self, tap: str) -> int:
        return self.tap_names.index(tap)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"{type(self).__name__} expects input (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {tuple(x.shape)}")


class StagedModel(TappedModel):
    """A feed-forward classifier made of named stages; every stage's output is a tap, and so is every child's
    output inside a ``nn.Sequential`` stage (``"<stage>.<i>"``, listed by `inner_tap_names`)."""

    def __init__(self, stages: Mapping[str, nn.Module] | Sequence[tuple[str, nn.Module]],
                 input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.stages = nn.ModuleDict(OrderedDict(stages))
        self.input_shape = cast(tuple[int, int, int], tuple(input_shape))
        self.num_classes = num_classes
        self._order = tuple(self.stages.keys())
        self._children = {stage: _children_taps(stage, module) for stage, module in self.stages.items()}
        self._positions = {tap: i for i, tap in enumerate(
            name for stage in self._order for name in (*self._children[stage], stage))}

    @property
    def tap_names(self) -> tuple[str, ...]:
        return self._order

    @property
    def inner_tap_names(self) -> tuple[str, ...]:
        """Taps inside Sequential stages, in forward order (e.g. ``layer1.1``: layer 1 before its pool)."""
        return tuple(name for stage in self._order for name in self._children[stage])

    def check_tap(self, tap: str) -> None:
        if tap not in self._positions:
            raise KeyError(f"unknown tap {tap!r}; this model has {list(self.tap_names)} and, inside them, "
                           f"{list(self.inner_tap_names)}")

    def _tap_position(self, tap: str) -> int:
        return self._positions[tap]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        for stage in self.stages.values():
            x = stage(x)
        return x

    def intermediates(self, x: torch.Tensor, taps: Iterable[str]) -> dict[str, torch.Tensor]:
        wanted = list(taps)
        last = self.deepest_tap(wanted)
        self._check_input(x)
        out: dict[str, torch.Tensor] = {}
        for name in self._order[: self._order.index(last.partition(".")[0]) + 1]:
            inner = [t for t in self._children[name] if t in wanted]
            if inner:  # run the stage child by child, keeping the wanted children's outputs
                for i, child in enumerate(cast(nn.Sequential, self.stages[name])):
                    x = child(x)
                    if f"{name}.{i}" in wanted:
                        out[f"{name}.{i}"] = x
                    if f"{name}.{i}" == last:
                        return out
            else:
                x = self.stages[name](x)
            if name in wanted:
                out[name] = x
        return out

    def forward_from(self, h: torch.Tensor, tap: str) -> torch.Tensor:
        self.check_tap(tap)
        stage, _, child = tap.partition(".")
        if child:
            for module in list(cast(nn.Sequential, self.stages[stage]))[int(child) + 1:]:
                h = module(h)
        for name in self._order[self._order.index(stage) + 1:]:
            h = self.stages[name](h)
        return h


def _children_taps(stage: str, module: nn.Module) -> tuple[str, ...]:
    """A Sequential stage's inner taps, all children but the last (whose output is the stage's own tap)."""
    n = len(module) if isinstance(module, nn.Sequential) else 0
    return tuple(f"{stage}.{i}" for i in range(n - 1))


class _StopForward(Exception):
    def __init__(self, outputs: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.outputs = outputs


class HookedModel(TappedModel):
    """Expose named submodules of any feed-forward ``nn.Module`` as taps, via forward hooks.

    ``forward_from`` runs the wrapped module on a zero input of ``input_shape`` with the tap's output
    replaced by h; this is exact whenever the layers after the tap depend on the input only through
    the tap (a feed-forward chain; not a network with skip connections around the tap).
    """

    def __init__(self, module: nn.Module, taps: Sequence[str], input_shape: tuple[int, int, int],
                 num_classes: int) -> None:
        super().__init__()
        self.module = module
        self.input_shape = cast(tuple[int, int, int], tuple(input_shape))
        self.num_classes = num_classes
        names = dict(module.named_modules())
        missing = [t for t in taps if t not in names]
        if missing:
            raise KeyError(f"{type(module).__name__} has no submodule(s) {missing}; "
                           f"named submodules are {[n for n in names if n][:20]}")
        self._taps = tuple(taps)

    @property
    def tap_names(self) -> tuple[str, ...]:
        return self._taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.module(x)

    def intermediates(self, x: torch.Tensor, taps: Iterable[str]) -> dict[str, torch.Tensor]:
        wanted = list(taps)
        for tap in wanted:
            self.check_tap(tap)
        self._check_input(x)
        outputs: dict[str, torch.Tensor] = {}

        def make_hook(name: str) -> Callable[..., None]:
            def hook(_mod: nn.Module, _inp: object, out: torch.Tensor) -> None:
                outputs[name] = out
                if len(outputs) == len(wanted):
                    raise _StopForward(outputs)
            return hook

        handles = [self.module.get_submodule(t).register_forward_hook(make_hook(t)) for t in wanted]
        try:
            self.module(x)
        except _StopForward as stop:
            return dict(stop.outputs)
        finally:
            for handle in handles:
                handle.remove()
        raise RuntimeError(f"taps {wanted} were never reached in {type(self.module).__name__}.forward")

    def forward_with(self, x: torch.Tensor, tap: str, transform: Transform) -> torch.Tensor:
        self.check_tap(tap)
        self._check_input(x)
        handle = self.module.get_submodule(tap).register_forward_hook(lambda _m, _i, out: transform(out))
        try:
            return self.module(x)
        finally:
            handle.remove()

    def forward_from(self, h: torch.Tensor, tap: str) -> torch.Tensor:
        zeros = torch.zeros((h.shape[0], *self.input_shape), dtype=h.dtype, device=h.device)
        return self.forward_with(zeros, tap, lambda _out: h)


def as_tapped(model: nn.Module, taps: Sequence[str] | None = None,
              input_shape: tuple[int, int, int] | None = None, num_classes: int | None = None) -> TappedModel:
    """Return `model` if it already has taps, else wrap it, naming the layers to expose."""
    if isinstance(model, TappedModel):
        return model
    if taps is None or input_shape is None or num_classes is None:
        raise ValueError("a plain nn.Module needs taps=[submodule names], input_shape=(C, H, W) and num_classes")
    return HookedModel(model, taps, input_shape, num_classes)


class TapModules(nn.Module):
    """Modules keyed by tap name, in order: a ``nn.ModuleDict`` cannot hold dotted names (``layer1.1``, a
    HookedModel's ``features.3``), so the names sit beside a ``nn.ModuleList``."""

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self._names = tuple(modules)
        self.members = nn.ModuleList(modules.values())

    def __getitem__(self, tap: str) -> nn.Module:
        if tap not in self._names:
            raise KeyError(f"no module for tap {tap!r}; have {list(self._names)}")
        return self.members[self._names.index(tap)]

    def __contains__(self, tap: object) -> bool:
        return tap in self._names

    def __len__(self) -> int:
        return len(self._names)

    def keys(self) -> tuple[str, ...]:
        return self._names

    def values(self) -> tuple[nn.Module, ...]:
        return tuple(self.members)

    def items(self) -> tuple[tuple[str, nn.Module], ...]:
        return tuple(zip(self._names, self.members))
