"""SASS of a compiled kernel as innermost-loop bodies: what both cost models read."""

from __future__ import annotations

import re
import subprocess
import tempfile

_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_BRANCH = re.compile(r"\bBRA(?:\.\w+)*\s+(?:`\((\.L_x_\d+)\)|(0x[0-9a-f]+))")


def innermost_loop_bodies(cubin: bytes, cuobjdump: str) -> list[list[str]]:
    """The instructions (NOPs dropped) of each innermost loop, in address order."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [cuobjdump, "-sass", f.name], capture_output=True, text=True, check=True
        ).stdout
    insns, labels, pending = [], {}, []
    for line in text.splitlines():
        m = _LABEL.match(line)
        if m:
            pending.append(m.group(1))
            continue
        m = _INSN.search(line)
        if m:
            addr = int(m.group(1), 16)
            for lab in pending:
                labels[lab] = addr
            pending = []
            insns.append((addr, m.group(2)))
    loops = []
    for addr, op in insns:
        # cuobjdump prints absolute targets (BRA 0x4c0), nvdisasm labels (BRA `(.L_x_3))
        b = _BRANCH.search(op)
        if not b:
            continue
        dest = labels.get(b.group(1), addr + 1) if b.group(1) else int(b.group(2), 16)
        if dest < addr:  # a backward branch closes a loop (a self-branch is the end trap)
            loops.append((dest, addr))
    inner = {
        (s, e) for s, e in loops if not any((s, e) != (s2, e2) and s <= s2 and e2 <= e
                                            for s2, e2 in loops)
    }  # fmt: skip
    return [
        [op for a, op in insns if s <= a <= e and not op.startswith("NOP")]
        for s, e in sorted(inner)
    ]


_LINE = re.compile(r'//## File "([^"]+)", line (\d+)')


def innermost_loops_with_lines(cubin: bytes, nvdisasm: str, source: str, whole: bool = False):
    """Each innermost loop, in address order, as {"ops": [...], "chains": {...}}.

    ``chains`` holds the call chains of ``source`` lines (outermost call first) that the
    loop's instructions carry in the line table (``nvdisasm -gi``: inlined functions
    keep their call sites), so a loop can be matched with the source line that loads in
    it. NOPs are dropped. ``whole``: the whole kernel as one such dict instead.
    """
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [nvdisasm, "-gi", "-c", f.name], capture_output=True, text=True, check=True
        ).stdout
    insns, labels, pending, group, chain = [], {}, [], [], ()
    for line in text.splitlines():
        m = _LABEL.match(line)
        if m:
            pending.append(m.group(1))
            continue
        if "//##" in line:
            group.append([(p, int(n)) for p, n in _LINE.findall(line)])
            continue
        m = _INSN.search(line)
        if m:
            if group:
                # a group lists the innermost frame first, each line "f, n inlined at g, k"
                frames = [g[0] for g in group]
                chain = tuple(n for p, n in reversed(frames) if p == source)
                group = []
            addr = int(m.group(1), 16)
            for lab in pending:
                labels[lab] = addr
            pending = []
            insns.append((addr, m.group(2), chain))
    if whole:
        return {
            "ops": [op for a, op, _ in insns if not op.startswith("NOP")],
            "chains": {c for a, op, c in insns if c},
        }
    loops = []
    for addr, op, _ in insns:
        b = _BRANCH.search(op)
        if b and b.group(1) and labels.get(b.group(1), addr + 1) < addr:
            loops.append((labels[b.group(1)], addr))
    inner = sorted(
        (s, e) for s, e in loops if not any((s, e) != (s2, e2) and s <= s2 and e2 <= e
                                            for s2, e2 in loops)
    )  # fmt: skip
    return [
        {
            "ops": [op for a, op, _ in insns if s <= a <= e and not op.startswith("NOP")],
            "chains": {c for a, op, c in insns if s <= a <= e and c},
        }
        for s, e in inner
    ]
