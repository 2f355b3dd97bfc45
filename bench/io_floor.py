"""The I/O floor of one case, as a whole process: read every input byte into arrays of the output's
size, then np.save them. Nothing is computed; a real exporter cannot be faster than this."""

import sys
from pathlib import Path

import numpy as np


def main(case_dir: str, out_dir: str, k: int, j: int, i: int) -> None:
    files = sorted(p for p in Path(case_dir).rglob("*") if p.is_file())
    ct = np.empty((k, j, i), dtype=np.int16)
    dose = np.empty((k, j, i), dtype=np.float32)
    flat_ct, flat_dose = ct.reshape(-1).view(np.uint8), dose.reshape(-1).view(np.uint8)
    at = 0
    for path in files:  # every byte lands in an output array, as pixels would
        data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        for flat in (flat_ct, flat_dose):
            n = min(data.size, flat.size - at % flat.size)
            flat[at % flat.size : at % flat.size + n] = data[:n]
        at += data.size
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "ct.npy", ct)
    np.save(out / "dose.npy", dose)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(v) for v in sys.argv[3:6]))
