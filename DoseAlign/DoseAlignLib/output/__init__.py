"""Stage 6: what a case and a batch write. Case folders written atomically (:mod:`.case_folder`,
:mod:`.npz`, :mod:`.files`), ``manifest.csv`` (:mod:`.manifest`), the training formats (:mod:`.formats`
with :mod:`.nifti`, :mod:`.nrrd`, :mod:`.hdf5`, :mod:`.openkbp`, :mod:`.datalist`, on the arrays of
:mod:`.case_data`), the pictures (:mod:`.qa_png`, :mod:`.report`) and pseudonymization
(:mod:`.pseudonym`).
"""
