"""Write a benchmark's table into docs/results.md between its own markers."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results.md"


def write_section(name: str, text: str) -> None:
    """Replace the ``name`` section of docs/results.md (or append it)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    doc = RESULTS.read_text() if RESULTS.exists() else "# Measured results\n"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        doc = head + block + rest.split(end, 1)[1]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(doc)
