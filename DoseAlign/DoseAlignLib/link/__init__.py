"""Stage 2: cases. Which doses make one case (:mod:`.beams`), which CT and structure sets belong to
it (:mod:`.ct_choice`), and the cases of a scan with their ids (:mod:`.cases`, making :class:`.case.Case` objects).
"""
