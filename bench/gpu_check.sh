#!/usr/bin/env bash
# One short GPU check (under 5 minutes on a current GPU): the CUDA-marked tests, then the
# Tiktok-scale benchmark on the CUDA device; the results land in bench/results/cuda-<date>.md/.json.
# Needs a CUDA build of torch (see README) and the packages of requirements-dev.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
python -m pytest -q -m cuda tests/test_cuda.py
python bench/benchmark.py --like tiktok --device cuda --epochs 4
