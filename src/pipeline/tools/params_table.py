"""The params reference (docs/params.md): one row per param, generated from the typed schema.

python -m pipeline.tools.params_table                  # print the table
python -m pipeline.tools.params_table docs/params.md   # refresh the table in that file
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, get_args

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from pipeline.core.config import Params
from pipeline.core.errors import PipelineError
from pipeline.core.io import write_text

TABLE_START, TABLE_END = "<!-- params-table:start -->\n", "<!-- params-table:end -->"


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|")


def _constraints(annotation: Any, metadata: list[Any]) -> list[Any]:
    """The numeric constraints of a field, found through Optional, list and Annotated."""
    found = list(metadata)
    for arg in get_args(annotation):
        if isinstance(arg, FieldInfo):
            found += arg.metadata
        else:
            found += _constraints(arg, [])
    return found


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _allowed(field: FieldInfo) -> str:
    """A field's registry choices, or its numeric range as `lo..hi` (`>`/`<` mark open ends);
    empty when it has neither."""
    if isinstance(field.json_schema_extra, dict) and "choices" in field.json_schema_extra:
        return ", ".join(f"`{name}`" for name in field.json_schema_extra["choices"])
    low = high = ""
    for bound in _constraints(field.annotation, field.metadata):
        if isinstance(bound, annotated_types.Ge):
            low = _number(bound.ge)
        elif isinstance(bound, annotated_types.Gt):
            low = _number(bound.gt + 1) if isinstance(bound.gt, int) else f">{bound.gt:g}"
        elif isinstance(bound, annotated_types.Le):
            high = _number(bound.le)
        elif isinstance(bound, annotated_types.Lt):
            high = f"<{_number(bound.lt)}"
    return f"{low}..{high}" if low or high else ""


def _rows(prefix: str, values: BaseModel) -> list[str]:
    """One row per leaf param; defaults read from an instance, so nested defaults are right."""
    rows = []
    for key, field in type(values).model_fields.items():
        value = getattr(values, key)
        if isinstance(value, BaseModel):
            rows += _rows(f"{prefix}{key}.", value)
        else:
            rows.append(
                f"| `{prefix}{key}` | `{value}` | {_allowed(field)} | {_cell(field.description)} |"
            )
    return rows


def params_table() -> str:
    """Markdown table of every param: default, registry choices or numeric range, description."""
    header = ["| param | default | allowed | meaning |", "|---|---|---|---|"]
    return "\n".join([*header, *_rows("", Params())])


def with_params_table(page: str) -> str:
    """``page`` with the text between the params-table markers replaced by a fresh table."""
    start, end = page.find(TABLE_START), page.find(TABLE_END)
    if start < 0 or end < start:
        raise PipelineError(f"no {TABLE_START.strip()} ... {TABLE_END} markers to fill")
    return f"{page[: start + len(TABLE_START)]}{params_table()}\n{page[end:]}"


def main(argv: list[str]) -> int:
    if len(argv) == 1:
        page = Path(argv[0])
        write_text(page, with_params_table(page.read_text(encoding="utf-8")))
    elif not argv:
        print(params_table())
    else:
        print("usage: python -m pipeline.tools.params_table [docs/params.md]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
