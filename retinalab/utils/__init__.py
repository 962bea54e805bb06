"""The bottom layer: files written whole or not at all (:mod:`.io`) and the errors a user can fix
(:mod:`.errors`). Imports nothing else of retinalab."""
