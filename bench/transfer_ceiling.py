"""The full-size transfer's ceiling: a perfect working-size edit carried to the photo's own size.

    python -m bench.transfer_ceiling bench/results/detail-reference-2026-12-02/transfer-ceiling-perfect-edit.json

For held-out crops at their own size (`full_size_crops("heldout", 5, seed=1)`), each kind's procedural edit is
made at the working size (64 px, fit) and carried to full size with `pipeline.outputs.transfer_edit`, the input's
working image as the reference; the result is judged against the procedural edit made at full size with the
held-out direction checks (share of rows the right way, L1 to the goal over the identity's). A model cannot pass
a kind at full size that this does not.
"""

from __future__ import annotations

import json
import random
import sys

import numpy as np

from mgie.images import work_image
from pipeline.evaluation.edit_checks import CHECKS
from pipeline.evaluation.full_size_checks import full_size_crops
from pipeline.outputs import transfer_edit
from pipeline.training.procedural import EDITS_BY_NAME


def main(out: str) -> None:
    crops = full_size_crops("heldout", 5, seed=1)
    rng = random.Random(0)
    figures = {}
    for kind, check in CHECKS.items():
        edit = EDITS_BY_NAME[kind]
        right = 0
        l1_out = l1_identity = 0.0
        moved = []
        for _, img in crops:
            strength = rng.uniform(*edit.strength)
            full = np.asarray(img.convert("RGB"))  # (H, W, 3) uint8
            goal = np.asarray(edit.apply(img, strength)).astype(np.float32) / 255
            work = work_image(img, "fit", 64)
            carried = transfer_edit(full, np.asarray(work), np.asarray(edit.apply(work, strength)))
            carried = carried.astype(np.float32) / 255
            source = full.astype(np.float32) / 255
            m = check.moved(source, carried)
            moved.append(m)
            right += m > check.margin
            l1_out += float(np.abs(carried - goal).mean())
            l1_identity += float(np.abs(source - goal).mean())
        figures[kind] = dict(
            right_way=right / len(crops), mean_moved=float(np.mean(moved)), l1_ratio=l1_out / l1_identity
        )
        print(kind, figures[kind], flush=True)
    with open(out, "w") as f:
        json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
