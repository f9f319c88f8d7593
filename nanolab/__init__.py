"""nanolab: a research harness for ablations of small GPT models.

    from nanolab import registry, load_spec, build_model, run
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

from nanolab import registry
from nanolab.config import Config
from nanolab.errors import NanolabError, SpecError
from nanolab.spec import load_spec

try:
    __version__ = version("nanolab")
except PackageNotFoundError:  # a source checkout on sys.path that pip never installed
    __version__ = "0+unknown"

__all__ = ["__version__", "registry", "Config", "NanolabError", "SpecError", "load_spec", "build_model", "run"]
_LAZY = {"build_model": "nanolab.model", "run": "nanolab.runner"}


def __getattr__(name):  # torch-heavy entry points load on first use
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nanolab' has no attribute {name!r}")
