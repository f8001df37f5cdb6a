"""Chat templates of Hugging Face model folders, rendered as transformers renders them.

A chat template is Jinja source from a downloaded folder: data, never code. It runs in jinja2's
`ImmutableSandboxedEnvironment`, which refuses attribute access to Python internals and any change
to the objects it is given; an operation the sandbox refuses, a syntax error or the template's
own `raise_exception` is a one-line `TokenizerError`. The environment is transformers': blocks
trimmed (`trim_blocks`, `lstrip_blocks`), `loopcontrols`, a `tojson` that leaves non-ASCII and
HTML characters as they are, and the globals `raise_exception` and `strftime_now` (today's date,
which some templates print: such a prompt changes with the day it is rendered).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edlm_dist.data.errors import TokenizerError


def render_chat(
    template: str, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool,
    special_tokens: Mapping[str, str], where: str, **variables: Any,
) -> str:
    """The text of `messages` (dicts with "role" and "content") under the chat `template`; the
    template also sees `add_generation_prompt`, `tools` and `documents` (None unless given), the
    named special tokens (`bos_token`, `eos_token`, ...) and `variables`. `where` names the
    template's folder in errors."""
    if not all(isinstance(m, Mapping) for m in messages):
        raise TokenizerError(f"chat template of {where}: messages must be dicts with 'role' and 'content'")
    compiled = _compile(template, where)
    context = {"tools": None, "documents": None, **special_tokens, **variables}
    try:
        return compiled.render(messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt,
                               **context)
    except jinja2.exceptions.SecurityError as e:
        raise TokenizerError(f"chat template of {where} tried an operation the sandbox refuses: {e}") from None
    except jinja2.exceptions.TemplateError as e:
        raise TokenizerError(f"chat template of {where}: {_one_line(e)}") from None
    except (TypeError, ValueError, LookupError, AttributeError) as e:
        raise TokenizerError(f"chat template of {where} failed: {type(e).__name__}: {_one_line(e)}") from None


@lru_cache(maxsize=16)
def _compile(template: str, where: str) -> jinja2.Template:
    try:
        return _environment().from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise TokenizerError(f"chat template of {where}: syntax error on line {e.lineno}: {_one_line(e)}") from None


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
