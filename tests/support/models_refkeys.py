"""Parse /work/shared/reference/state_dict_keys.txt (so-vits 4.1 state-dict listings) for the model tests.

Sections are lettered A..M. Full sections list `key  [shape]` lines in state-dict order; variant
sections list `-- REMOVED:`, `-- ADDED:` and `-- SHAPE CHANGED:` differences relative to A.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

REFERENCE = Path("/work/shared/reference/state_dict_keys.txt")
_HEADER = re.compile(r"^([A-M])\. ")
_ENTRY = re.compile(r"^(\S+)\s+\[([\d, ]*)\](?:\s*->\s*\[([\d, ]*)\])?$")

Shape = tuple[int, ...]


def _shape(text: str) -> Shape:
    return tuple(int(x) for x in text.split(",") if x.strip())


@dataclass
class Section:
    entries: list[tuple[str, Shape]] = field(default_factory=list)  # full listing, in order
    removed: list[str] = field(default_factory=list)
    added: list[tuple[str, Shape]] = field(default_factory=list)
    changed: dict[str, Shape] = field(default_factory=dict)


def parse(path: Path = REFERENCE) -> dict[str, Section]:
    sections: dict[str, Section] = {}
    current: Section | None = None
    mode = "full"
    for line in path.read_text(encoding="utf-8").splitlines():
        header = _HEADER.match(line)
        if header:
            current = sections.setdefault(header.group(1), Section())
            mode = "full"
            continue
        if current is None:
            continue
        if line.startswith("-- "):
            mode = "removed" if "REMOVED" in line else "changed" if "SHAPE CHANGED" in line else \
                "added" if line.strip() == "-- ADDED:" else "other"
            continue
        entry = _ENTRY.match(line.strip())
        if not entry:
            continue
        key, shape = entry.group(1), _shape(entry.group(2))
        if mode == "full":
            current.entries.append((key, shape))
        elif mode == "removed":
            current.removed.append(key)
        elif mode == "added":
            current.added.append((key, shape))
        elif mode == "changed":
            current.changed[key] = _shape(entry.group(3))
    return sections


def expected_variant(sections: dict[str, Section], letter: str) -> dict[str, Shape]:
    """Key -> shape of a variant: section A with the variant's differences applied (order not given)."""
    base = dict(sections["A"].entries)
    variant = sections[letter]
    for key in variant.removed:
        del base[key]
    base.update(variant.changed)
    base.update(dict(variant.added))
    return base
