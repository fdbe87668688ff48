"""Named layer taps: read any intermediate activation, or run the rest of the network from it.

Both defences need the same two moves on a classifier F:

* ``features(x, tap)``: the activation O_N of layer N (DLD's encoder input, LAD's phi(x));
* ``forward_from(h, tap)``: the logits of the layers after N applied to an activation h
  (LAD's f_p(z'), DLD's F with a decoded activation fed back in).

``forward_with(x, tap, transform)`` is the composition (F with A_N inserted at layer N).
Models we define are :class:`StagedModel` (an ordered dict of stages, cheap and exact); a user's own
``nn.Module`` is wrapped by :class:`HookedModel`, which names submodules and uses forward hooks.
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

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"{type(self).__name__} expects input (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {tuple(x.shape)}")


class StagedModel(TappedModel):
    """A feed-forward classifier made of named stages; every stage's output is a tap."""

    def __init__(self, stages: Mapping[str, nn.Module] | Sequence[tuple[str, nn.Module]],
                 input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.stages = nn.ModuleDict(OrderedDict(stages))
        self.input_shape = cast(tuple[int, int, int], tuple(input_shape))
        self.num_classes = num_classes
        self._order = tuple(self.stages.keys())

    @property
    def tap_names(self) -> tuple[str, ...]:
        return self._order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        for stage in self.stages.values():
            x = stage(x)
        return x

    def intermediates(self, x: torch.Tensor, taps: Iterable[str]) -> dict[str, torch.Tensor]:
        wanted = list(taps)
        for tap in wanted:
            self.check_tap(tap)
        self._check_input(x)
        last = max(self._order.index(t) for t in wanted)
        out: dict[str, torch.Tensor] = {}
        for name in self._order[: last + 1]:
            x = self.stages[name](x)
            if name in wanted:
                out[name] = x
        return out

    def forward_from(self, h: torch.Tensor, tap: str) -> torch.Tensor:
        self.check_tap(tap)
        for name in self._order[self._order.index(tap) + 1:]:
            h = self.stages[name](h)
        return h


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
