"""`python -m src.explain [KEY ...]`: each config key, its type, its default and what it means.

The documentation is the comment each field carries in src/config/ (on the lines above it, or
after it on its own line), read from the source, so it is written once. A KEY is a section
(`training`), a key (`training.learning_rate`) or a prefix of one; none: every key. The defaults
shown are the schema's; what a config option or preset sets instead is shown, resolved, by
`python -m src.main <overrides> --cfg job`.
"""

from __future__ import annotations

import ast
import inspect
import io
import re
import signal
import sys
import textwrap
import tokenize
import types
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, get_type_hints

from src.config import Config
from src.core.choice import Choice
from src.core.errors import EXIT_CONFIG_ERROR


def field_docs(cls: type) -> dict[str, str]:
    """{field: its comment} for the dataclass (or the Choice) `cls`: the comment lines right above
    the field, or the comment that ends its own line (the last, for a field on several lines)."""
    lines, _ = inspect.getsourcelines(cls)
    source = "".join(lines)
    comments: dict[int, str] = {}  # line number (1-based, in `source`) -> comment text
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT and not token.string.startswith("# fmt:"):
            comments[token.start[0]] = token.string.lstrip("#").strip()
    own_line = {n for n in comments if lines[n - 1].lstrip().startswith("#")}
    docs: dict[str, str] = {}
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    for node in body.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if not isinstance(target, ast.Name):
            continue
        above, n = [], node.lineno - 1
        while n in own_line:
            above.insert(0, comments[n])
            n -= 1
        trailing = comments.get(node.end_lineno) if node.end_lineno not in own_line else None
        docs[target.id] = " ".join(filter(None, [*above, trailing]))
    return docs


def schema_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(key, type, default, doc) of every leaf key of the schema, in the order of the file; a
    section (a dataclass field) is listed through its own keys."""
    hints = get_type_hints(cls)
    docs = field_docs(cls)
    keys: list[tuple[str, str, Any, str]] = []
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        kind = hints[f.name]
        section = _optional(kind)
        if is_dataclass(section):
            keys.append((key, "section", None, docs[f.name] or inspect.getdoc(section) or ""))
            keys.extend(schema_keys(section, f"{key}."))
            continue
        if f.default is not MISSING:
            default: Any = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = "(set by the config's options)"
        keys.append((key, _type_name(kind), default, docs[f.name]))
    return keys


def choices(key: str) -> dict[str, str]:
    """{name: its comment} of the choices a Choice-typed key takes (those with a comment)."""
    cls: Any = Config
    for part in key.split("."):
        cls = _optional(get_type_hints(cls)[part])
    if not (isinstance(cls, type) and issubclass(cls, Choice)):
        return {}
    return {name: doc for name, doc in field_docs(cls).items() if doc}


def _optional(kind: Any) -> Any:
    """`X` for `X | None`, else `kind` itself."""
    if isinstance(kind, types.UnionType):
        return next(t for t in kind.__args__ if t is not type(None))
    return kind


def _type_name(kind: Any) -> str:
    members = getattr(kind, "__members__", None)
    if members:  # a Choice: the names a config may write
        return " | ".join(members)
    return re.sub(r"<class '(?:\w+\.)*(\w+)'>|\b(?:\w+\.)+(\w+)", lambda m: m[1] or m[2], str(kind))


def _wrapped(text: str, indent: str) -> str:
    return textwrap.fill(text, 100, initial_indent=indent, subsequent_indent=indent + "  ")


def _shown(default: Any) -> str:
    if default is None:
        return "null"
    return str(getattr(default, "value", default))


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends the listing quietly
    wanted = sys.argv[1:] if argv is None else argv
    keys = schema_keys()
    chosen = [k for k in keys if not wanted or any(k[0].startswith(w) for w in wanted)]
    if not chosen:
        print(
            f"error: no config key starts with {' or '.join(wanted)}; "
            "run `python -m src.explain` for every key",
            file=sys.stderr,
        )
        return EXIT_CONFIG_ERROR
    for key, kind, default, doc in chosen:
        if kind == "section":
            print("\n" + _wrapped(f"{key}: {' '.join(doc.split())}", ""))
            continue
        print(f"  {key}: {kind} = {_shown(default)}")
        if doc:
            print(_wrapped(doc, "      "))
        for choice, meaning in choices(key).items():
            print(_wrapped(f"{choice}: {meaning}", "        "))
    return 0


if __name__ == "__main__":
    sys.exit(main())
