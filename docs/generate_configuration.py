"""Regenerate the settings reference in docs/configuration.md from `service.settings.Settings`.

    .venv/bin/python docs/generate_configuration.py          # rewrite the generated section
    .venv/bin/python docs/generate_configuration.py --check  # exit 1 when it is out of date

The table between the BEGIN/END markers lists every field: its environment variable, type and
constraints, default and the docstring written under the field in service/settings.py, grouped by
the `# --- section ---` comments there. tests/test_docs_configuration.py fails when the file and
Settings disagree, so a new setting cannot ship undocumented.
"""

from __future__ import annotations

import re
import sys
import types
import typing
from pathlib import Path

import annotated_types
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make `service` importable

from service.settings import Settings  # noqa: E402

DOC = REPO / "docs" / "configuration.md"
BEGIN = "<!-- BEGIN GENERATED: settings (docs/generate_configuration.py) -->"
END = "<!-- END GENERATED: settings -->"


def sections() -> dict[str, str]:
    """Map each field name to the `# --- section ---` comment above it in settings.py."""
    source = (REPO / "service" / "settings.py").read_text(encoding="utf-8")
    current, found = "Other", {}
    for line in source.splitlines():
        heading = re.match(r"\s*# -+ (.+?) -+\s*$", line)
        if heading:
            current = heading.group(1).strip().capitalize()
            continue
        field = re.match(r"    (\w+): ", line)
        if field and field.group(1) in Settings.model_fields:
            found[field.group(1)] = current
    return found


def type_text(info: FieldInfo) -> str:
    """A short type name with its constraints, e.g. `integer ≥ 1` or one of `auto`, `cpu`, `gpu`."""
    annotation = info.annotation
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        annotation = args[0]
    if typing.get_origin(annotation) is typing.Literal:
        text = "one of " + ", ".join(f"`{v}`" for v in typing.get_args(annotation))
    elif typing.get_origin(annotation) is list:
        text = "comma-separated list"
    else:
        text = {int: "integer", float: "number", bool: "boolean", str: "string", Path: "path"}.get(
            annotation, getattr(annotation, "__name__", str(annotation))
        )
    bounds = []
    for meta in info.metadata:
        for cls, sign, attr in (
            (annotated_types.Ge, "≥", "ge"),
            (annotated_types.Gt, ">", "gt"),
            (annotated_types.Le, "≤", "le"),
            (annotated_types.Lt, "<", "lt"),
        ):
            if isinstance(meta, cls):
                bounds.append(f"{sign} {getattr(meta, attr)}")
    if bounds:
        text += " " + ", ".join(bounds)
    return text + (", optional" if optional else "")


def default_text(name: str, info: FieldInfo) -> str:
    """The default as one would write it in the environment."""
    if info.default_factory is not None:
        value = info.default_factory()
    elif info.default is PydanticUndefined:
        return "(required)"
    else:
        value = info.default
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return "(empty)" if not value else "`" + ",".join(map(str, value)) + "`"
    if isinstance(value, int) and name.endswith("_bytes") and value >= 1024 * 1024:
        return f"`{value}` ({value // (1024 * 1024)} MiB)"
    return f"`{value}`"


def render() -> str:
    """The generated section, markers included."""
    grouped: dict[str, list[str]] = {}
    section_of = sections()
    for name, info in Settings.model_fields.items():
        description = " ".join((info.description or "").split()).replace("|", "\\|")
        row = f"| `{name.upper()}` | {type_text(info)} | {default_text(name, info)} | {description} |"
        grouped.setdefault(section_of.get(name, "Other"), []).append(row)
    parts = [BEGIN, ""]
    for section, rows in grouped.items():
        parts += [
            f"### {section}",
            "",
            "| variable | type | default | what it changes |",
            "|---|---|---|---|",
            *rows,
            "",
        ]
    parts.append(END)
    return "\n".join(parts)


def updated(text: str) -> str:
    """`text` (docs/configuration.md) with its generated section replaced by `render()`."""
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + render() + text[end:]


def main(argv: list[str]) -> int:
    text = DOC.read_text(encoding="utf-8")
    new = updated(text)
    if "--check" in argv:
        if new != text:
            print(f"{DOC.relative_to(REPO)} is out of date: run .venv/bin/python docs/generate_configuration.py")
            return 1
        return 0
    DOC.write_text(new, encoding="utf-8")
    print(f"wrote {DOC.relative_to(REPO)} ({len(Settings.model_fields)} settings)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
