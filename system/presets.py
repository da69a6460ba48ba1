"""Names of the model presets that ``system/config.py`` builds, in a module that imports no torch:
the run config validates ``model.preset`` against them on every CLI command."""

MODEL_PRESETS: tuple[str, ...] = ("n1-2b", "tiny")
