"""sd-erasure: concept erasure for Stable Diffusion on the Hugging Face stack.

    from erasure import SalUnConfig, erase
    result = erase(SalUnConfig(model="CompVis/stable-diffusion-v1-4", concept="nudity", output_dir="sd14-no-nudity"))

Every method has a config dataclass (SalUnConfig, SalUnSoftConfig, EsdConfig, UceConfig) and runs
through the same `erase`. The heavy modules (torch, diffusers) load on first use, so
`sd-erase --help` stays fast.
"""

__version__ = "0.1.0"

_LAZY = {
    "SalUnConfig": "erasure.salun",
    "SalUnSoftConfig": "erasure.salun_soft",
    "EsdConfig": "erasure.esd",
    "UceConfig": "erasure.uce",
    "EraseResult": "erasure.job",
    "erase": "erasure.methods",
    "erase_pipeline": "erasure.methods",
    "METHODS": "erasure.methods",
    "EraseError": "erasure.errors",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'erasure' has no attribute {name!r}")
