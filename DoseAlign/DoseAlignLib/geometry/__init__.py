"""Stage 3: grids and resampling. Voxel grids in patient space (:mod:`.grid`), the reference grid a
case's outputs share (:mod:`.reference`), resampling onto it (:mod:`.resample`), and the bridge to
SimpleITK images (:mod:`.sitk_bridge`).
"""
