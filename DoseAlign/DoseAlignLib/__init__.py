"""DoseAlign engine: DICOM-RT CT, dose and structures on one voxel grid, without Slicer.

The engine uses numpy, pydicom and SimpleITK only; it never imports slicer, qt or ctk, so the
`dosealign` command, the Slicer module and notebooks all share it.
"""

__version__ = "0.1.0"

from .errors import DoseAlignError, GeometryError, InputError, UnitsError  # noqa: E402
from .grid import Grid, Volume  # noqa: E402

__all__ = ["DoseAlignError", "GeometryError", "Grid", "InputError", "UnitsError", "Volume", "__version__"]
