"""PromptMM: pre-train a prompt-enhanced multi-modal graph teacher, then distil it into a
lightweight ID-only student with pair-wise, disentangled list-wise and embedding KD.

    python main.py                                   # both stages on the default movielens data
    python main.py --dataset tiktok --stage teacher  # stage 1 only
    python main.py --resume runs/tiktok/<timestamp>  # continue an interrupted run
    torchrun --nproc_per_node 2 main.py ...          # data-parallel (docs/distributed.md)

This file parses the flags and calls the pipeline (``utility/pipeline.py``): ``prepare`` ->
``fit_teacher`` / ``load_teacher`` -> ``distil`` -> ``report``.
"""
import sys

from utility.distributed import Distributed, exit_without_finalizing, launched_by_torchrun
from utility.errors import UserError
from utility.parser import parse_args
from utility.pipeline import execute, resolve_device


def main(argv=None):
    try:
        args = parse_args(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    dist = None
    if launched_by_torchrun():
        try:
            dist = Distributed(resolve_device(args.device).type)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
    try:
        return execute(args, dist)
    finally:
        if dist is not None:
            dist.close()


if __name__ == "__main__":
    code = main()
    if launched_by_torchrun():
        exit_without_finalizing(code)
    sys.exit(code)
