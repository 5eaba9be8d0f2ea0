"""Where Cloud Run offers GPUs and what a GPU revision needs: one list, read by the
`ReleaseTarget` block (refused when saved or loaded). The sandbox holds Google's facts itself
(sandbox/emulator/cloud_run_gpu.py); tests/configuration/test_sandbox_agrees.py checks they agree.

From Cloud Run's GPU documentation (cloud.google.com/run/docs/configuring/services/gpu):
an L4 instance needs at least 4 CPU and 16 GiB of memory, CPU always allocated
(instance-based billing, no throttling), and the `nvidia-l4` accelerator node selector with
the `nvidia.com/gpu` limit; the regions are those listed there at the time of writing.
"""

from __future__ import annotations

CLOUD_RUN_GPU_REGIONS: dict[str, tuple[str, ...]] = {
    "nvidia-l4": ("asia-southeast1", "europe-west1", "europe-west4", "us-central1", "us-east4"),
}
GPU_MIN_CPU: dict[str, float] = {"nvidia-l4": 4.0}
GPU_MIN_MEMORY_GIB: dict[str, float] = {"nvidia-l4": 16.0}


def gpu_regions(gpu_type: str) -> tuple[str, ...]:
    """The regions that offer `gpu_type` on Cloud Run (empty for an unknown type)."""
    return CLOUD_RUN_GPU_REGIONS.get(gpu_type, ())
