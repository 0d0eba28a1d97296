"""sd-erasure: concept erasure for Stable Diffusion on the Hugging Face stack.

    from sd_erasure import SalUnConfig, erase
    result = erase(SalUnConfig(model="CompVis/stable-diffusion-v1-4", concept="nudity", output_dir="sd14-no-nudity"))

Every registered method has a config dataclass (its class name, e.g. SalUnConfig, is importable
from here) and runs through the same `erase`. The packages: sd_erasure.erasure (methods and
their primitives), sd_erasure.pipelines, sd_erasure.evaluation, sd_erasure.hub_cards. Nothing
here imports torch: it loads when an erase starts.
"""

import os
from importlib.util import find_spec

__version__ = "0.1.0"

from .erasure.config import EraseConfig, TrainingConfig  # noqa: E402
from .erasure.errors import EraseError  # noqa: E402
from .erasure.folders import BUNDLED_MODELS  # noqa: E402
from .erasure.job import EraseResult, erase, erase_pipeline  # noqa: E402
from .erasure.registry import get_method, methods  # noqa: E402
from .erasure.registry import register as register_method  # noqa: E402

# The embedded default: the shapes-world model shipped with the evaluation package (its data, not its code).
_ASSETS = os.path.join(find_spec("sd_erasure.evaluation").submodule_search_locations[0], "assets")
BUNDLED_MODELS["shapes"] = os.path.join(_ASSETS, "shapes-sd")
BUNDLED_MODELS["shapes-clip"] = os.path.join(_ASSETS, "shapes-clip")  # its CLIP model (SLUG's image tower)
BUNDLED_MODELS["shapes-xl"] = os.path.join(_ASSETS, "shapes-sdxl")  # the same world on SDXL's architecture
BUNDLED_MODELS["shapes-xl-clip"] = os.path.join(_ASSETS, "shapes-xl-clip")  # CLIP models of its text encoders
BUNDLED_MODELS["shapes-xl-clip-2"] = os.path.join(_ASSETS, "shapes-xl-clip-2")

__all__ = ["EraseConfig", "TrainingConfig", "EraseError", "EraseResult", "erase", "erase_pipeline", "get_method",
           "methods", "register_method", "__version__"]


def __getattr__(name):
    """The registered methods' config classes by class name (SalUnConfig, EsdConfig, ...)."""
    for method in methods().values():
        if method.config.__name__ == name:
            return method.config
    raise AttributeError(f"module 'sd_erasure' has no attribute {name!r}")
