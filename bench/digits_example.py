"""Does KD pay on the digits example? Student vs scratch baseline over seeds and label shares.

Runs examples/digits-kd.yaml with seeds 0..N-1 and several `data.labeled_fraction` values and
prints teacher, KD student and baseline accuracy (mean ± std) and the KD − baseline difference.
The teacher trained in the job sees every label; the student and the baseline only the kept
share (see README). With labeled_fraction 1.0 the comparison is plain fully supervised KD.

    .venv/bin/python bench/digits_example.py [--seeds 3] [--fractions 0.05 0.1 1.0]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
from pathlib import Path

import yaml

from kdcore.pipeline import run
from kdcore.validation import parse_spec

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "digits-kd.yaml"


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):6.2f} ± {std:4.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1, 1.0])
    args = parser.parse_args()
    base = yaml.safe_load(EXAMPLE.read_text())
    print(
        f"{'labels':>7} {'teacher':>15} {'KD student':>15} {'baseline':>15} "
        f"{'KD − base':>15} {'s/run':>6}"
    )
    for fraction in args.fractions:
        rows = []
        for seed in range(args.seeds):
            d = copy.deepcopy(base)
            d["data"].update(labeled_fraction=fraction, seed=seed)
            d["train"]["seed"] = d["teacher"]["train"]["seed"] = seed
            d["export"] = ["safetensors"]
            with tempfile.TemporaryDirectory() as out:
                r = run(parse_spec(d), out).to_json()
            rows.append(
                (
                    r["teacher"]["accuracy"],
                    r["student"]["accuracy"],
                    r["baseline"]["accuracy"],
                    r["timings"]["total"],
                )
            )
        t, s, b, secs = (list(col) for col in zip(*rows, strict=True))
        diff = [si - bi for si, bi in zip(s, b, strict=True)]
        print(
            f"{fraction:>7.2f} {mean_std(t):>15} {mean_std(s):>15} {mean_std(b):>15} "
            f"{mean_std(diff):>15} {statistics.mean(secs):>6.1f}"
        )


if __name__ == "__main__":
    main()
