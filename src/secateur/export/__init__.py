"""Exports: a pruned model written for use outside secateur, one registered format each.

``export_model(source, out, format)`` reads a model (an ``nn.Module``, a checkpoint, or a run
folder, whose chosen ``model.safetensors`` is used) and writes ``out`` in a format registered in
:data:`EXPORT_FORMATS`. A format is an :class:`ExportFormat`: its name, the file suffix it
writes, the options it reads and a ``write(model, path, options)`` function; the CLI
(``secateur export``) and the API list and accept the same names and options. A format is
added by registering one more :class:`ExportFormat` in its own module (named in the registry's
``builtins``), with nothing else touched.

An export never overwrites a file the user had: ``out`` must not exist unless ``force=True``,
and every write is atomic (temporary file, then rename).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from secateur.arguments import expect_module, expect_path
from secateur.errors import ConfigError
from secateur.registry import Registry

Writer = Callable[[nn.Module, Path, Mapping[str, object]], Mapping[str, object]]
"""Writes ``model`` to ``path`` with the format's parsed ``options``; returns facts worth reporting."""


@dataclass(frozen=True)
class ExportOption:
    """One option of a format: ``parse`` turns a CLI string (or an API value) into its value."""

    parse: Callable[[object], object]
    help: str
    default: object = None


@dataclass(frozen=True)
class ExportFormat:
    """One way to write a model out: suffix, accepted options (name -> help) and writer."""

    name: str
    suffix: str
    write: Writer
    help: str
    options: Mapping[str, ExportOption] = field(default_factory=dict)

    def parse_options(self, given: Mapping[str, object]) -> dict[str, object]:
        """``given`` checked against :attr:`options` and parsed, defaults filled in; one-line errors."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            valid = ", ".join(sorted(self.options)) or "none"
            raise ConfigError(f"export format {self.name!r} takes no option(s) {', '.join(unknown)}; valid: {valid}")
        parsed = {name: option.default for name, option in self.options.items()}
        for name, value in given.items():
            try:
                parsed[name] = self.options[name].parse(value)
            except (TypeError, ValueError) as error:
                raise ConfigError(f"export option {name}={value!r} is invalid ({error}); "
                                  f"{name}: {self.options[name].help}") from None
        return parsed


@dataclass(frozen=True)
class Exported:
    """What an export wrote: the file, its real size on disk, and the format's own facts."""

    path: Path
    format: str
    bytes: int
    details: Mapping[str, object] = field(default_factory=dict)


EXPORT_FORMATS: Registry[ExportFormat] = Registry(
    "export format", builtins=("secateur.export.dense", "secateur.export.compact", "secateur.export.onnx"))


def register_format(spec: ExportFormat) -> ExportFormat:
    """Add ``spec`` to :data:`EXPORT_FORMATS` (the one way formats are registered)."""
    EXPORT_FORMATS.add(spec.name, spec, spec.help)
    return spec


def source_model(source: nn.Module | str | Path) -> nn.Module:
    """The model to export: ``source`` itself, or loaded (no pickle) from a checkpoint or run folder."""
    if isinstance(source, nn.Module):
        return source
    from secateur.io import rundir  # lazy: io imports the training stack, which an nn.Module source never needs
    from secateur.io.storage import load_model

    expect_path(source, "source", "a checkpoint or run folder path")
    model, _ = load_model(rundir.checkpoint_in(Path(source)))
    return model


def export_model(source: nn.Module | str | Path, out: str | Path, format: str = "dense", *,
                 force: bool = False, **options: object) -> Exported:
    """Write ``source`` (a model, checkpoint or run folder) to ``out`` in ``format``; see the module doc."""
    spec = EXPORT_FORMATS.get(format)
    parsed = spec.parse_options(options)
    expect_path(out, "out", "the path of the file to write")
    path = Path(out)
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; choose another --out or pass --force to replace it")
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; --out names the file to write")
    model = source_model(source)
    expect_module(model)
    details = spec.write(model, path, parsed)
    return Exported(path, spec.name, path.stat().st_size, dict(details))
