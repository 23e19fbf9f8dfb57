"""``graphbatch run``'s engine flags, generated from ``EngineConfig``'s fields: the flag
is ``--field-name`` (vLLM's names), older names stay as aliases, the default and the
validation are the config's own."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing

from graphbatch.serving import ConfigError, EngineConfig

DEST = "engine_"  # argparse dests: engine_<field>, apart from the workload's flags


def _fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(EngineConfig) if "help" in f.metadata]


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def flags_named(field_name: str) -> str:
    """Every flag that sets ``field_name``, e.g. ``--max-num-batched-tokens/--budget``."""
    f = next(f for f in dataclasses.fields(EngineConfig) if f.name == field_name)
    names = [flag_of(f), *f.metadata.get("aliases", ())]
    if "negative_alias" in f.metadata:
        names.append(f.metadata["negative_alias"])
    return "/".join(names)


def _value_type(f: dataclasses.Field) -> type:
    hints = typing.get_type_hints(EngineConfig)
    t = hints[f.name]
    args = [a for a in typing.get_args(t) if a is not type(None)]
    if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
        t = args[0]
    if typing.get_origin(t) is tuple:  # tuple[int, ...]
        t = typing.get_args(t)[0]
    return t


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """One option per EngineConfig field with help metadata (defaults: the config's)."""
    defaults = EngineConfig.__dataclass_fields__
    for f in _fields():
        meta, dest = f.metadata, DEST + f.name
        default = defaults[f.name].default
        names = [flag_of(f), *meta.get("aliases", ())]
        if _value_type(f) is bool:
            if default:
                p.add_argument(
                    *names, dest=dest, action=argparse.BooleanOptionalAction, default=True,
                    help=meta["help"],
                )  # fmt: skip
                p.add_argument(
                    meta["negative_alias"], dest=dest, action="store_false",
                    help=f"same as --no-{names[0][2:]}",
                )  # fmt: skip
            else:
                p.add_argument(*names, dest=dest, action="store_true", help=meta["help"])
            continue
        kwargs = {"type": _value_type(f), "default": default, "help": meta["help"]}
        if "choices" in meta:
            kwargs["choices"] = list(meta["choices"])
        if "nargs" in meta:
            kwargs["nargs"] = meta["nargs"]
        p.add_argument(*names, dest=dest, metavar=f.name.split("_")[-1].upper(), **kwargs)


def config_from_args(args: argparse.Namespace, **overrides) -> EngineConfig:
    """The EngineConfig the flags describe; ValueError naming the flag(s) of a bad field."""
    values = {f.name: getattr(args, DEST + f.name) for f in _fields()}
    values.update(overrides)
    if values.get("cuda_graph_sizes") is not None:
        values["cuda_graph_sizes"] = tuple(values["cuda_graph_sizes"])
    try:
        return EngineConfig(**values)
    except ConfigError as e:
        raise ValueError(f"{flags_named(e.field)}: {e.message}") from None
