"""DoseAlign engine: DICOM-RT CT, dose and structures on one voxel grid, without Slicer.

The engine uses numpy, pydicom and SimpleITK only; it never imports slicer, qt or ctk, so the
``dosealign`` command, the Slicer module and notebooks all share it. Its public API is
:mod:`DoseAlignLib.api` (also reachable here: ``DoseAlignLib.export_folder``).

A case's path through the sub-packages, in order::

    dicom/       1. read: headers, folder scan, CT series, RTDOSE, RTSTRUCT contours, damaged files
    link/        2. cases: which doses are summed, which CT and structure sets belong to them
    geometry/    3. grids in patient space, the reference grid, resampling
    structures/  4. contours to masks on the output grid, the body mask, DVHs
    audit/       5. did resampling change what the dose means? flags with their reasons
    output/      6. pair.npz + meta.json, manifest.csv, training formats, pictures, pseudonyms

    pipeline.py  one case through 1-6        batch.py, parallel.py  every case of a folder
    cli.py       the ``dosealign`` command    options.py, errors.py  shared by every stage
    phantom.py   synthetic studies with known truth (demo and tests)
    training.py  a PyTorch-style dataset over an export
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    import importlib

    api = importlib.import_module(".api", __name__)  # the public names, imported on first use
    return api if name == "api" else getattr(api, name)
