"""Where the workplace's shared data and specs lie (`../shared/` beside the checkout), for tests that skip without
them."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR10_JPEG = SHARED_DATA / "cifar10-jpeg"

requires_cifar10 = pytest.mark.skipif(
    not (CIFAR10_JPEG / "train.tar").is_file(),
    reason=f"CIFAR-10 is not on this machine: {CIFAR10_JPEG} (the shared JPEG copy these tests read) is absent")

OIP_SPEC = SHARED_DATA.parent / "specs" / "open-inference-protocol" / "open_inference_rest.yaml"

requires_oip_spec = pytest.mark.skipif(
    not OIP_SPEC.is_file(),
    reason=f"the Open Inference Protocol's OpenAPI document is not on this machine: {OIP_SPEC} is absent")
