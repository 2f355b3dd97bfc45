"""DoseAlign's MRML bridge: engine volumes <-> Slicer volume nodes, and Slicer's resamplers.

The middle layer between the engine (``DoseAlignLib``, no Slicer) and the Slicer module
(``DoseAlign.py``): :mod:`.volumes` converts (IJKToRAS, arrayFromVolume); :mod:`.resamplers` are the
Resample CLI and in-process VTK resamplers the engine's ``run_case`` takes. Both need only Slicer's
MRML/VTK classes (and ``slicer.cli`` for the CLI), so they run inside Slicer and with PyPI
``slicer-core``, which is how CI tests them. ``slicer`` is imported inside the functions.
"""

from . import resamplers, volumes

__all__ = ["resamplers", "volumes"]
