"""The body mask from a CT, for cases without an EXTERNAL ROI."""

from __future__ import annotations

import numpy as np

#: CT number above which a voxel may belong to the body when no EXTERNAL ROI exists.
BODY_THRESHOLD_HU = -500.0


def body_from_ct(ct: np.ndarray, threshold_hu: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """Body mask from a CT: voxels above ``threshold_hu``, the largest connected part, holes filled.

    Connected components and their sizes come from SimpleITK (ConnectedComponent, then
    RelabelComponent, which numbers components by decreasing size); enclosed holes (lungs,
    bowel gas) are filled slice by slice with BinaryFillhole.

    Parameters
    ----------
    ct : (K, J, I) array
        CT numbers (HU).
    threshold_hu : float

    Returns
    -------
    (K, J, I) bool array
    """
    import SimpleITK as sitk

    above = np.ascontiguousarray(ct > threshold_hu, dtype=np.uint8)
    if not above.any():
        return above.astype(bool)
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(above)))
    body = sitk.GetArrayFromImage(labels) == 1
    filled = np.empty_like(body)
    for k in range(body.shape[0]):
        image = sitk.GetImageFromArray(body[k].astype(np.uint8))
        filled[k] = sitk.GetArrayFromImage(sitk.BinaryFillhole(image, fullyConnected=False, foregroundValue=1)) > 0
    return filled
