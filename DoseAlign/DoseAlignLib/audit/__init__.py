"""Stage 5: the dosimetric audit. Does the training pair represent the plan's dose?

Compares the dose on its native grid with the dose on the output grid: Dmax and its location,
mean dose in the body, integral dose, the part of the integral dose lying outside the output
grid, the dose on the native grid's outer faces (named), per-ROI DVH points on both grids against
each ROI's reference DVH (contours + native dose, no voxel grid), the beam sum against the PLAN
dose when both exist, and the geometry checks already made. Findings over the
thresholds become flags (short codes) in ``meta["audit"]["flags"]`` and in manifest.csv.

Modules: :mod:`.thresholds` (the flag thresholds and why), :mod:`.stats` (per-slice dose facts and index
boxes shared by the steps), :mod:`.dose` (Dmax, mean and integral dose), :mod:`.rois` (per-ROI DVH points on
both grids), :mod:`.reference` (the voxel DVHs against the reference DVH), :mod:`.beams` (beam sum against the PLAN dose), :mod:`.flags` (findings to flags and manifest
columns), :mod:`.case` (the audit of one case, into ``meta["audit"]``).
"""
