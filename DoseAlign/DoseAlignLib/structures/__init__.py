"""Stage 4: structures. Planar polygons (:mod:`.polygons`), ROI names and the ROI map (:mod:`.names`),
contours to masks on any grid (:mod:`.rasterize`), masks and their storage (:mod:`.masks`), the
body mask (:mod:`.body`), dose-volume histograms (:mod:`.dvh`) and one case's masks (:mod:`.case`).
"""
