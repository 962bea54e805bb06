"""Grids of runs: a study's cells (:mod:`.spec`, :mod:`.study`, :mod:`.report`), W&B-style sweeps run
locally (:mod:`.sweep`) and the launcher that runs many processes side by side (:mod:`.launch`)."""
