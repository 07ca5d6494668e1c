"""Public ops. Every submodule registers its torch custom ops on import and lists its public
functions in ``__all__``; this package imports them all and re-exports those names."""

from __future__ import annotations

import importlib
import pkgutil

__all__: list[str] = []

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    _module = importlib.import_module(f"{__name__}.{_mod}")
    for _name in getattr(_module, "__all__", ()):
        globals()[_name] = getattr(_module, _name)
        __all__.append(_name)
