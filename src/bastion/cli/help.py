"""Help pages that read like a normal CLI's: ``--port PORT`` and ``bastion models show NAME``.

Typer 0.29 labels every value with its Python type (``--help <bool>``, ``--port <int>``) and
wraps required arguments in braces (``{name}``). It builds the parameter objects itself and offers
no hook for their class, so the command classes below (passed as ``cls=``) give each parameter a
plain-help class the first time its command lists them."""

from __future__ import annotations

from typing import Any

import typer
from typer import _click
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption


class _PlainOption(TyperOption):
    def display_type_rich(self, ctx: _click.Context) -> str | None:
        if self.is_flag or self.count:
            return None
        if self.metavar is not None:
            return self.metavar
        name = (self.name or "value").upper()
        return f"{name}..." if self.nargs != 1 else name


class _PlainArgument(TyperArgument):
    def _rich_display_name(self) -> str:
        return self.display_name_raw + ("..." if self.nargs != 1 else "")

    def display_type_rich(self, ctx: _click.Context) -> str | None:
        return None  # the name column already says what the argument is

    def get_usage_pieces(self, ctx: _click.Context) -> list[str]:
        name = self._rich_display_name()
        return [name if self.required else f"[{name}]"]


def _plain(params: list[Any]) -> list[Any]:
    for param in params:
        # Same state, different help methods: the subclasses add no attributes.
        if type(param) is TyperOption:
            param.__class__ = _PlainOption
        elif type(param) is TyperArgument:
            param.__class__ = _PlainArgument
            param.metavar = param.metavar or (param.name or "value").upper()  # errors say NAME
    return params


class PlainCommand(TyperCommand):
    def get_params(self, ctx: _click.Context) -> list[Any]:
        return _plain(super().get_params(ctx))


class PlainGroup(TyperGroup):
    def get_params(self, ctx: _click.Context) -> list[Any]:
        return _plain(super().get_params(ctx))


def new_app(help_text: str, **kwargs: Any) -> typer.Typer:
    """A sub-command group with plain help; its commands take ``cls=PlainCommand``."""
    return typer.Typer(help=help_text, no_args_is_help=True, cls=PlainGroup, **kwargs)
