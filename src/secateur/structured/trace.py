"""``torch.fx`` tracing with errors that name the failing op and module path."""

from __future__ import annotations

from typing import Any

from torch import fx, nn

from ..errors import UnsupportedModelError


class _PathTracer(fx.Tracer):
    """A standard fx tracer that remembers which module it is inside, for error messages."""

    def __init__(self) -> None:
        super().__init__()
        self.path_stack: list[str] = []
        self.failed_in: str | None = None

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        self.path_stack.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self.path_stack[-1]
            raise
        finally:
            self.path_stack.pop()


def trace_model(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model``; failures raise one-line :class:`UnsupportedModelError`."""
    tracer = _PathTracer()
    try:
        graph = tracer.trace(model)
    except Exception as err:  # fx raises many types (TraceError, TypeError, RuntimeError ...)
        where = tracer.failed_in or "<root>"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UnsupportedModelError(
            f"cannot trace {type(model).__name__} for structured pruning: {type(err).__name__}: "
            f"{first[:200]} (in module {where!r}); the model is unchanged"
        ) from None
    return fx.GraphModule(tracer.root, graph, type(model).__name__)
