"""The erasure methods behind one interface: a config dataclass and a `run(config)` per method.

Adding a method means adding its file beside salun.py and one line here.
"""

from . import salun

METHODS = {"salun": salun}


def erase(config, step_callback=None, show_progress=True):
    """Run the method that `config` belongs to and write its output folder; returns an EraseResult."""
    return METHODS[config.method].run(config, step_callback=step_callback, show_progress=show_progress)
