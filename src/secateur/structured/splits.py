"""Channel-dim splits (``torch.split`` / ``chunk``) followed chunk by chunk, and their sizes rewritten.

A split along the labelled dim hands each part the tags at its offsets (as ``cat`` joins them).
What the pruning may remove inside each part depends on where the sizes come from:

- **sizes given as a list** (``torch.split(x, self.splits, 1)``, timm's ``MixedConv2d``): every
  part loses channels on its own, and the surgery writes the kept counts back into the module
  attribute the forward reads. The attribute is found by a rule of :data:`SPLIT_SIZES`; the
  built-in ``attribute`` rule takes the one list / tuple attribute of the module making the call
  whose value equals the traced sizes.
- **one size for every part** (``torch.split(x, self.width, 1)``, Res2Net) and **a part count**
  (``x.chunk(n, 1)``, EdgeNeXt): the forward derives the part sizes from the channel count, so
  position ``j`` of every part is coupled (every full part keeps the same number, whichever
  channels the method ranks lowest); where the last part is shorter, the positions the other
  parts have beyond it are kept, so that ``chunk`` / ``split`` computes the kept sizes again.
  A fixed size must be an attribute the surgery can rewrite (found by the same rules); a count
  needs nothing rewritten.

Split sizes that no rule can place (literals in the code, sizes computed in the forward) keep
the channels, and the split is reported in ``DependencyGraph.unfollowed`` with that reason.

Every part is recorded as a member of role :data:`SIZE_ROLE` under :func:`size_key`: the plan
then holds each part's kept positions (what the surgery needs, and what a saved plan replays),
and a part is one more layer in its channels' signature, so every part keeps at least one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from secateur.errors import ConfigError
from secateur.registry import Registry
from secateur.structured.tracker import Labels, Tracker

SIZE_ROLE = "sizes"  # a member's positions are one part of a split (no weight of its own)
_SEP = ":"
_COMPUTED = "()"  # a size-key name ending so holds no attribute: the forward computes the sizes


def size_key(owner: str, name: str, part: int) -> str:
    """The record / plan key of part ``part`` of the split whose sizes ``owner``'s ``name`` holds."""
    return f"{owner}{_SEP}{name}{_SEP}{part}"


def parse_size_key(key: str) -> tuple[str, str, int] | None:
    """``(owner path, attribute, part)`` of a :func:`size_key`, or None for any other key."""
    pieces = key.rsplit(_SEP, 2)
    if len(pieces) != 3 or not pieces[2].isdigit() or not pieces[1]:
        return None
    return pieces[0], pieces[1], int(pieces[2])


# --------------------------------------------------------------------------- where sizes live

SizeRule = Callable[[nn.Module, Any], "str | None"]
SPLIT_SIZES: Registry[SizeRule] = Registry("split size owner")


def split_sizes(name: str) -> Callable[[SizeRule], SizeRule]:
    """Decorator: register a rule ``(module, traced sizes) -> attribute name or None`` naming the
    attribute of ``module`` (the module whose forward calls the split) that holds its sizes."""

    def decorate(rule: SizeRule) -> SizeRule:
        SPLIT_SIZES.add(name, rule)
        return rule

    return decorate


@split_sizes("attribute")
def _equal_attribute(module: nn.Module, sizes: Any) -> str | None:
    """The one plain attribute (an int, or a list / tuple of ints) whose value equals the traced sizes."""
    found = [k for k, v in vars(module).items() if not k.startswith("_") and _same_sizes(v, sizes)]
    return found[0] if len(found) == 1 else None


def _same_sizes(value: Any, sizes: Any) -> bool:
    if isinstance(sizes, int) and not isinstance(sizes, bool):
        return type(value) is int and value == sizes
    return (isinstance(value, (list, tuple)) and len(value) == len(sizes)
            and all(type(v) is int and v == s for v, s in zip(value, sizes)))


def size_owner(module: nn.Module | None, sizes: Any) -> str | None:
    """The attribute of ``module`` holding ``sizes``, from the first :data:`SPLIT_SIZES` rule that finds one."""
    if module is None:
        return None
    for name in SPLIT_SIZES:
        attr = SPLIT_SIZES.get(name)(module, sizes)
        if attr is not None and _same_sizes(getattr(module, attr, None), sizes):
            return attr
    return None


# --------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class SplitCall:
    """One split along the labelled dim: what was asked, what came out, and who asked."""

    kind: str  # "split" or "chunk" ("tensor_split" and others are not followed)
    asked: Any  # the traced sizes (list), size (int) or count (int); an fx Node when computed
    parts: tuple[int, ...]  # the size of every part it returned
    owner: str  # the path of the module whose forward calls it ("" for the model's own)
    module: nn.Module | None
    node: str  # the fx node name (the key of a split whose sizes the forward computes)


def split_labels(tr: Tracker, tags: torch.Tensor, call: SplitCall) -> tuple[list[torch.Tensor] | None, str]:
    """The tags of every part, or None and why the split cannot be followed."""
    if call.kind not in ("split", "chunk"):
        return None, f"{call.kind} is not followed along the channels"
    if not isinstance(call.asked, (int, list, tuple)):
        return None, "its sizes are computed in the forward"
    if call.kind == "chunk" and len(call.parts) != call.asked:
        return None, f"chunk({call.asked}) returns {len(call.parts)} parts, which pruning could change"
    even = not isinstance(call.asked, (list, tuple))
    name = f"{call.node}{_COMPUTED}" if call.kind == "chunk" else size_owner(call.module, call.asked)
    if name is None:
        return None, (f"no single attribute of {call.owner or '<root>'!r} holds its sizes {call.asked!r} "
                      "(register a rule in secateur.structured.splits.SPLIT_SIZES)")
    offsets = [0, *torch.tensor(call.parts).cumsum(0).tolist()]
    parts = [tags[a:b] for a, b in itertools.pairwise(offsets)]
    if even:
        _couple_positions(tr, parts)
    for i, part in enumerate(parts):
        tr.record(size_key(call.owner, name, i), SIZE_ROLE, part)
    return parts, ""


def _couple_positions(tr: Tracker, parts: Sequence[torch.Tensor]) -> None:
    """Position ``j`` of every part goes together; positions past the (shorter) last part are kept.

    Then every full part keeps ``a`` channels and the last ``c`` with ``1 <= c <= a``, and
    ``chunk(n)`` / ``split(a)`` of the ``(n - 1) a + c`` kept channels gives those parts again.
    """
    first, last = parts[0], parts[-1]
    for part in parts[1:]:
        tr.uf.union_pairs(first[:len(part)], part)
    if len(last) < len(first):
        tr.lock_labels((0, first[len(last):]))
        tr.notes.append(f"kept {len(first) - len(last)} channels of each full part of a split whose last part "
                        "is shorter")


# --------------------------------------------------------------------------- surgery


def size_edits(model: nn.Module, keep_out: dict[str, list[int]]) -> list[tuple[nn.Module, str, Any]]:
    """(module, attribute, kept sizes) for every split-size attribute the plan's parts shrink."""
    cuts: dict[tuple[str, str], dict[int, list[int]]] = {}
    for key, idx in keep_out.items():
        found = parse_size_key(key)
        if found is not None and not found[1].endswith(_COMPUTED):
            cuts.setdefault(found[:2], {})[found[2]] = idx
    edits = []
    for (owner, attr), kept in sorted(cuts.items()):
        try:
            m = model.get_submodule(owner)
        except AttributeError:
            raise ConfigError(f"plan names split sizes of {owner!r}, which this model does not have") from None
        edits.append((m, attr, _new_sizes(f"{owner}.{attr}", getattr(m, attr, None), kept)))
    return edits


def _new_sizes(where: str, old: Any, kept: dict[int, list[int]]) -> Any:
    """The sizes ``old`` (a list / tuple per part, or one int for every full part) after ``kept``."""
    if type(old) is int:
        if 0 not in kept:
            return old
        return _count(where, 0, old, kept[0])
    if not isinstance(old, (list, tuple)) or any(type(s) is not int for s in old) or max(kept) >= len(old):
        raise ConfigError(f"plan shrinks split sizes {where!r}, which this model does not hold as sizes")
    new = [_count(where, i, s, kept[i]) if i in kept else s for i, s in enumerate(old)]
    return type(old)(new)


def _count(where: str, part: int, size: int, idx: list[int]) -> int:
    if not idx or len(set(idx)) != len(idx) or min(idx) < 0 or max(idx) >= size:
        raise ConfigError(f"plan for part {part} of split sizes {where!r} keeps invalid positions (size {size}): "
                          f"need distinct values in [0, {size}), at least one")
    return len(idx)


def labelled_parts(dim: int, parts: list[torch.Tensor] | None, count: int) -> list[Labels | None]:
    """The labels of a split's outputs (None each when it is not followed)."""
    return [None] * count if parts is None else [(dim, p) for p in parts]
