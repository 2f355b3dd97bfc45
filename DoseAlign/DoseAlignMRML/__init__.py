"""DoseAlign's MRML bridge: engine volumes <-> Slicer volume nodes (IJKToRAS, arrayFromVolume).

The middle layer between the engine (``DoseAlignLib``, no Slicer) and the Slicer module
(``DoseAlign.py``): it needs only Slicer's MRML/VTK classes, so it runs inside Slicer and with
PyPI ``slicer-core``, which is how CI tests it. ``slicer`` is imported inside the functions.
"""

from . import volumes

__all__ = ["volumes"]
