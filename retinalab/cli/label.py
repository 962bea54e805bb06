"""``retinalab label``: label an active-learning run's queries in the browser, or through Label Studio files."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from ..utils.errors import ArgumentParser

DESCRIPTION = (
    "label an active-learning run's queries in the browser, or through Label Studio files: retinalab label --run DIR"
)


def main(argv: Sequence[str]) -> int:
    """``retinalab label``: the labelling page of a human-oracle run (:mod:`retinalab.labelling.server`),
    or its Label Studio files (:mod:`retinalab.labelling.label_studio`)."""
    p = ArgumentParser(prog="retinalab label", description=DESCRIPTION)
    p.add_argument("--run", required=True, help="the out_dir of a `retinalab active` run with oracle: human")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to serve on (default 127.0.0.1: this machine only; any other needs the token printed in the URL)",
    )
    p.add_argument("--port", type=int, default=8765, help="port (0: any free one)")
    p.add_argument("--open", action="store_true", help="open the page in this machine's browser")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--export-ls",
        nargs="?",
        const="",
        metavar="FILE",
        help="write the waiting round as Label Studio tasks (default: queries/round_NNN/label_studio/tasks.json) and "
        "exit",
    )
    g.add_argument(
        "--import-ls",
        metavar="FILE",
        help="journal the labels of a Label Studio JSON export for the waiting round and exit",
    )
    p.add_argument(
        "--ls-document-root",
        help="--export-ls: the folder Label Studio serves local files from (default: the run's queries folder)",
    )
    p.add_argument(
        "--ls-url-prefix",
        help="--export-ls: reference the pictures as URLs under this prefix instead of Label Studio local files",
    )
    a = p.parse_args(list(argv))
    run = Path(a.run)
    if a.export_ls is not None:
        from ..labelling.label_studio import export_tasks

        tasks = export_tasks(run, a.export_ls or None, a.ls_document_root, a.ls_url_prefix)
        root = Path(a.ls_document_root or run / "queries").resolve()  # export_tasks' default document root
        print(
            f"{len(json.loads(tasks.read_text()))} Label Studio tasks: {tasks}; labelling interface: "
            f"{tasks.parent / 'label_config.xml'}"
        )
        if not a.ls_url_prefix:
            print(
                "start Label Studio with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true "
                f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={root}, "
                "add that folder as local storage, import the tasks; export as JSON and run: retinalab label --run "
                f"{run} --import-ls FILE"
            )
        return 0
    if a.import_ls:
        from ..labelling.label_studio import import_annotations

        got, open_, _ = import_annotations(run, a.import_ls)
        print(
            f"{got} label{'' if got == 1 else 's'} journalled in {run / 'answers.json'}; {open_} "
            f"quer{'y' if open_ == 1 else 'ies'} of the round still without a label"
            + (
                ""
                if open_
                else f"; continue with `retinalab label --run {run}` or `retinalab active --config "
                f"{run / 'config.yaml'} --resume`"
            )
        )
        return 0
    from ..labelling.server import serve
    from ..labelling.session import LabelSession

    with LabelSession(run) as session:
        # SIGTERM (a scheduler, `kill`, `timeout`) stops the page as Ctrl-C does: the run's lock is released and
        # a round in training is waited for (uvicorn shuts down, then raises the signal again, which lands here)
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            serve(session, a.host, a.port, open_browser=a.open)
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
        if session.status == "training":
            print(
                "retinalab label: waiting for the round in training to be saved (Ctrl-C again stops it; it is redone "
                "on the next start)",
                file=sys.stderr,
            )
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
