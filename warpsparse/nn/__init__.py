"""Neural-network layers on SparseTensors (``warpsparse.nn.functional`` for the functional forms)."""
from warpsparse.nn import functional, modules
from warpsparse.nn.modules import *  # noqa: F401,F403
from warpsparse.nn.modules import __all__ as _modules_all

__all__ = ["functional", "modules", *_modules_all]
