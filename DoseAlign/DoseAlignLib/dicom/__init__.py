"""Stage 1: reading DICOM-RT. Headers and values (:mod:`.headers`), the folder scan (:mod:`.scan`),
CT series (:mod:`.ct`; the frames of an Enhanced CT file: :mod:`.enhanced`), RTDOSE (:mod:`.rtdose`),
RTSTRUCT contours (:mod:`.rtstruct`) and damaged files (:mod:`.damage`). Geometry is computed here from
the raw tags, never taken from a toolkit.
"""
