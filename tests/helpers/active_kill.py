"""`retinalab active` in a process of its own that a test can kill with SIGKILL at a known point.

    python -m tests.active_kill --config run.yaml [--resume]

``$RETINALAB_TEST_KILL_ROUND=r``: the process kills itself (``kill -9``: no handler, no clean-up) in
round ``r`` after the oracle answered it and before the model update. ``$RETINALAB_TEST_ASKED=file``:
every item asked of the oracle is appended to ``file``, one JSON list per call.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from retinalab.active import ActiveLearning
from retinalab.active.learner import Learner
from retinalab.cli import main

_train, _setup = Learner.train, ActiveLearning.setup


def _killing_train(self, state, epochs, r):  # noqa: ANN001, ANN202
    if r == int(os.environ.get("RETINALAB_TEST_KILL_ROUND", "-1")):
        os.kill(os.getpid(), signal.SIGKILL)
    return _train(self, state, epochs, r)


def _recording_setup(self):  # noqa: ANN001, ANN202
    _setup(self)
    oracle, path = self.oracle, os.environ.get("RETINALAB_TEST_ASKED")
    if path:

        def asked(items, r, scores=None):  # noqa: ANN001, ANN202
            with open(path, "a") as f:
                f.write(json.dumps([str(i) for i in items]) + "\n")
            return oracle(items, r, scores)

        self.oracle = asked


Learner.train = _killing_train
ActiveLearning.setup = _recording_setup

if __name__ == "__main__":
    sys.exit(main(["active", *sys.argv[1:]]))
