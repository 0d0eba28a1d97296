"""The erasure methods behind one interface (erasure/job.py): a config dataclass and
`erase_pipeline(pipeline, config, session)` per method, each in its own file.

Adding a method means adding its file beside salun.py and one line here.
"""

from . import esd, salun, salun_soft, uce
from .job import erase_in_memory, run

METHODS = {"salun": salun, "salun-soft": salun_soft, "esd": esd, "uce": uce}
CONFIGS = {"salun": salun.SalUnConfig, "salun-soft": salun_soft.SalUnSoftConfig, "esd": esd.EsdConfig,
           "uce": uce.UceConfig}


def erase(config, step_callback=None, show_progress=True):
    """Run the method that `config` belongs to and write its output folder; returns an EraseResult."""
    return run(METHODS[config.method], config, step_callback=step_callback, show_progress=show_progress)


def erase_pipeline(pipeline, config, step_callback=None, show_progress=True):
    """Run the method that `config` belongs to on a pipeline in memory; returns an EraseResult (no output_dir)."""
    return erase_in_memory(METHODS[config.method], pipeline, config, step_callback=step_callback,
                           show_progress=show_progress)
