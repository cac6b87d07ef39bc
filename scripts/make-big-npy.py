#!/usr/bin/env python3
"""Writes big .npy inputs for `eval`'s streaming measurements (BENCHMARKS.md),
with the standard library only: logits [N, C] f32 (a 1 MiB block of seeded
normal values repeated) and class-index targets [N] int64.

    scripts/make-big-npy.py DIR ROWS COLS
"""
import array
import os
import random
import sys


def header(descr, shape):
    dims = ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "")
    text = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (descr, dims)
    total = -(-(10 + len(text) + 1) // 64) * 64
    text = text + " " * (total - 10 - len(text) - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode()


def main():
    out, rows, cols = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    os.makedirs(out, exist_ok=True)
    rng = random.Random(7)
    block = array.array("f", (rng.gauss(0.0, 2.0) for _ in range(1 << 18))).tobytes()
    total = rows * cols * 4
    with open(os.path.join(out, "x.npy"), "wb") as f:
        f.write(header("<f4", [rows, cols]))
        written = 0
        while written < total:
            chunk = block[: min(len(block), total - written)]
            f.write(chunk)
            written += len(chunk)
    targets = array.array("q", (rng.randrange(cols) for _ in range(rows)))
    with open(os.path.join(out, "t.npy"), "wb") as f:
        f.write(header("<i8", [rows]))
        f.write(targets.tobytes())


if __name__ == "__main__":
    main()
