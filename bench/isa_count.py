"""Instruction counts of kernel loops, from PTX (`nvcc -ptx`) or SASS (`cuobjdump -sass`).

A loop is the span between a branch target and a branch that jumps back to it; the
innermost loops are what a kernel spends its time in. For each function the script lists
its innermost loops with their instruction count by class (tensor-core, integer/logic,
float, memory, shuffle, control). With --budget it picks the hot loops of the BQQMatMul
kernels (budget_rows: which function, which loop, how many packed bytes one iteration of
one warp consumes, from the kernels' header comments) and prints warp-instructions per packed byte next to the
memory-bound budgets of docs/KERNELS.md (H200 ~0.22, Orin ~0.4). One PTX or SASS
instruction executed by a warp is one warp-instruction, so a loop body of n instructions
that consumes b packed bytes per warp costs n / b warp-instructions per byte.

usage: python bench/isa_count.py FILE [--budget] [--function REGEX] [--markdown]
  FILE: a .ptx file, or the text output of `cuobjdump -sass` (any extension)
Standard library only: runs on a GPU machine's bare python3.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

# Standard configuration for the per-byte figures: g_r = g_c = 64, rank 32 (one word).
GC = 64
CLASSES = [  # (class, regex on the opcode, SASS and PTX spellings)
    ("tensor", r"^(HMMA|IMMA|HGMMA|mma|wgmma|ldmatrix|LDSM|movmatrix|MOVM)"),
    ("memory", r"^(LD|ST|LDG|STG|LDS|STS|LDGSTS|LDC|ATOM|RED|ld|st|cp|atom|red|prefetch)"),
    ("shuffle", r"^(SHFL|shfl|VOTE|vote)"),
    ("control", r"^(BRA|EXIT|BAR|BSYNC|BSSY|WARPSYNC|CALL|RET|bra|bar|ret|exit|setp|ISETP|FSETP|PLOP3|P2R|R2P|call)"),
    ("float", r"^(F|H|D|cvt|add\.f|sub\.f|mul\.f|fma|mad\.f|neg\.f|abs\.f|max\.f|min\.f|rcp|div\.f|I2F|F2I|F2F)"),
    ("integer", r".*"),
]


@dataclass
class Loop:
    start: int
    end: int
    instructions: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    def classes(self) -> dict[str, int]:
        counts = {name: 0 for name, _ in CLASSES}
        for op in self.instructions:
            for name, pattern in CLASSES:
                if re.match(pattern, op):
                    counts[name] += 1
                    break
        return counts

    def has(self, alternatives: str) -> bool:
        return any(re.match(rf"^({alternatives})\b", op) for op in self.instructions)


@dataclass
class Function:
    name: str
    ops: list[str] = field(default_factory=list)        # opcode of each instruction, in order
    targets: list[str | None] = field(default_factory=list)  # branch target label, if a branch
    labels: dict[str, int] = field(default_factory=dict)  # label -> index of the next instruction

    def loops(self) -> list[Loop]:
        found = []
        for index, target in enumerate(self.targets):
            if target is not None and target in self.labels and self.labels[target] <= index:
                start = self.labels[target]
                found.append(Loop(start, index, self.ops[start:index + 1]))
        return found

    def innermost(self) -> list[Loop]:
        loops = self.loops()
        return [a for a in loops
                if not any(b is not a and a.start <= b.start and b.end <= a.end and b.size < a.size for b in loops)]

    def exclusive(self, outer: Loop) -> Loop:
        """outer's instructions that lie in no loop nested inside it."""
        inner = [b for b in self.loops() if outer.start <= b.start and b.end <= outer.end and b.size < outer.size]
        keep = [k for k in range(outer.start, outer.end + 1) if not any(b.start <= k <= b.end for b in inner)]
        return Loop(outer.start, outer.end, [self.ops[k] for k in keep])

    def parent(self, loop: Loop) -> Loop | None:
        """The smallest loop that strictly contains `loop`."""
        outer = [b for b in self.loops() if b.start <= loop.start and loop.end <= b.end and b.size > loop.size]
        return min(outer, key=lambda b: b.size) if outer else None


_SASS_FUNC = re.compile(r"^\s*Function\s*:\s*(\S+)")
_SASS_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_SASS_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_PTX_FUNC = re.compile(r"^\s*(?:\.visible\s+|\.weak\s+)?\.(?:entry|func)\s+(?:\([^)]*\)\s*)?([\w$]+)")
_PTX_LABEL = re.compile(r"^\s*([$\w]+):")
_PTX_INSTR = re.compile(r"^\s*(@!?%\w+\s+)?([a-z][\w.:]*)\b([^;]*);")


def parse_sass(text: str) -> list[Function]:
    functions: list[Function] = []
    address_index: dict[int, int] = {}
    for line in text.splitlines():
        match = _SASS_FUNC.match(line)
        if match:
            functions.append(Function(match.group(1)))
            address_index = {}
            continue
        if not functions:
            continue
        fn = functions[-1]
        label = _SASS_LABEL.match(line)
        if label:
            fn.labels[label.group(1)] = len(fn.ops)
            continue
        instr = _SASS_INSTR.match(line)
        if not instr:
            continue
        op, operands = instr.group(3), instr.group(4)
        if op.startswith("NOP"):
            continue
        address_index[int(instr.group(1), 16)] = len(fn.ops)
        fn.labels[f"0x{int(instr.group(1), 16):x}"] = len(fn.ops)
        target = None
        if op.split(".")[0] in ("BRA", "BRX"):
            named = re.search(r"`\((\.L_x_\d+)\)", operands)
            addr = re.search(r"0x([0-9a-f]+)", operands)
            target = named.group(1) if named else (f"0x{int(addr.group(1), 16):x}" if addr else None)
        fn.ops.append(op)
        fn.targets.append(target)
    return functions


def parse_ptx(text: str) -> list[Function]:
    functions: list[Function] = []
    depth = 0
    for line in text.splitlines():
        line = line.split("//")[0]
        match = _PTX_FUNC.match(line)
        if match and depth == 0:
            functions.append(Function(match.group(1)))
        depth += line.count("{") - line.count("}")
        if not functions or depth <= 0:
            continue
        fn = functions[-1]
        label = _PTX_LABEL.match(line)
        if label and not line.strip().startswith("."):
            fn.labels[label.group(1)] = len(fn.ops)
            continue
        instr = _PTX_INSTR.match(line)
        if not instr or instr.group(2).startswith("."):
            continue
        op = instr.group(2)
        target = None
        if op.startswith("bra"):
            target = instr.group(3).strip().split()[-1] if instr.group(3).strip() else None
        fn.ops.append(op)
        fn.targets.append(target)
    return functions


def parse(text: str) -> list[Function]:
    return parse_sass(text) if _SASS_FUNC.search(text) or "code for sm_" in text else parse_ptx(text)


def _count(loop: Loop, alternatives: str) -> int:
    return sum(1 for op in loop.instructions if re.match(rf"^({alternatives})\b", op))


def budget_rows(functions: list[Function]) -> list[tuple[str, str, int, int, float]]:
    """(label, function, instructions, packed bytes, warp-instructions per byte) of the hot
    loops, at the standard configuration (GC = 64 columns per block, one word per row)."""
    rows = []
    for fn in functions:
        inner = fn.innermost()
        decode = re.search(r"decode_kernelILi(\d)ELb1E", fn.name)
        if decode:  # tensor-core decode, one-word specialisation; MT m-tiles of 16 rows
            mt = int(decode.group(1))
            p1 = next((lp for lp in inner if lp.has("HMMA|mma") and lp.has("PRMT|prmt")), None)
            outer = fn.parent(p1) if p1 else None
            if p1 is None or outer is None:
                continue
            steps = max(1, _count(p1, "LDSM|ldmatrix"))  # 16-column steps per loop iteration
            p2 = fn.exclusive(outer)                       # T fix-up + phase 2, once per (stack, word)
            p1_total = p1.size * (GC // 16) / steps
            rows.append(("decode phase 1 (Z: 16 columns x 32 bits per step)", fn.name, p1.size, 64 * steps,
                         p1.size / (64 * steps)))
            rows.append((f"decode T fix-up + phase 2 (Y: {16 * mt} rows x 32 bits)", fn.name, p2.size, 64 * mt,
                         p2.size / (64 * mt)))
            rows.append((f"decode per block and stack, MT={mt} (Z {4 * GC} B + Y {64 * mt} B)", fn.name,
                         round(p1_total + p2.size), 4 * GC + 64 * mt, (p1_total + p2.size) / (4 * GC + 64 * mt)))
            continue
        gemv = re.search(r"gemv_kernelILi(\d+)E", fn.name)
        if gemv:  # portable SIMT kernel, NR activation rows
            nr = int(gemv.group(1))
            tphase = [lp for lp in inner if lp.has("SHFL|shfl")]
            yphase = [lp for lp in inner if not lp.has("SHFL|shfl") and lp.has("LDS|ld.shared")
                      and _count(lp, "FADD|add.f32|add.rn.f32") >= 2 * nr]
            if tphase:
                lp = max(tphase, key=lambda x: x.size)
                nbytes = 4 * _count(lp, "SHFL|shfl")  # one broadcast Z word per column
                rows.append((f"portable t-phase, {nr} row(s)", fn.name, lp.size, nbytes, lp.size / nbytes))
            if yphase:
                lp = max(yphase, key=lambda x: x.size)
                bits = _count(lp, "FADD|add.f32|add.rn.f32") // (2 * nr)  # 2 output rows per lane
                nbytes = bits * 2 * 32 // 8
                rows.append((f"portable y-phase, {nr} row(s)", fn.name, lp.size, nbytes, lp.size / nbytes))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--budget", action="store_true", help="warp-instructions per packed byte of the hot loops")
    parser.add_argument("--function", default="", help="only functions whose name matches this regex")
    parser.add_argument("--markdown", action="store_true", help="print the --budget table as markdown")
    args = parser.parse_args(argv)
    functions = [fn for fn in parse(args.file.read_text(errors="replace")) if re.search(args.function, fn.name)]
    if not functions:
        print(f"no function found in {args.file}", file=sys.stderr)
        return 2
    if args.budget:
        rows = budget_rows(functions)
        if not rows:
            print("no BQQ hot loop found (is this the PTX/SASS of the BQQ kernels?)", file=sys.stderr)
            return 2
        if args.markdown:
            print("| loop | function | instructions / iteration | packed bytes / iteration | warp-instr / byte |")
            print("|---|---|---|---|---|")
        for label, name, size, nbytes, per_byte in rows:
            short = re.sub(r"_ZN3bqq\w*?_GLOBAL__N__\w+?\d+(\w+?)E", r"\1", name)[:70]
            if args.markdown:
                print(f"| {label} | `{short}` | {size} | {nbytes} | {per_byte:.3f} |")
            else:
                print(f"{per_byte:7.3f} warp-instr/B  {size:4d} instr / {nbytes:3d} B  {label}  [{short}]")
        print("budget at full DRAM bandwidth: H200 ~0.22, Jetson Orin ~0.4 warp-instr/B (docs/KERNELS.md)")
        return 0
    for fn in functions:
        print(f"{fn.name}: {len(fn.ops)} instructions")
        for loop in fn.innermost():
            counts = ", ".join(f"{k} {v}" for k, v in loop.classes().items() if v)
            print(f"  innermost loop [{loop.start}..{loop.end}]: {loop.size} instructions ({counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
