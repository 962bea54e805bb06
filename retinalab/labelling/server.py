"""``retinalab label``: the labelling page of a human-oracle active-learning run, served on this machine.

A FastAPI app over a :class:`~retinalab.labelling.session.LabelSession`: the page (plain HTML and
JavaScript, ``page.html``, no build step) shows the round's queries one by one (the patch enlarged,
the photograph with the patch boxed, the acquisition's heatmap as an overlay, the model's probability)
and sends one answer per key press; every answer is journalled before the reply. The JSON API:

* ``GET /api/state``: the run, the round waiting for labels, its queries and their answers, the loop's
  phase while a round trains, the metrics so far;
* ``POST /api/answer`` ``{"round": r, "query_id": "q0003", "label": 0 | 1}``; ``POST /api/unanswer``
  ``{"round": r, "query_id": ...}`` (undo, until the round trains);
* ``GET /api/files/{round}/{query_id}/{patch|photo|plain|heat}``: the pictures;
* ``POST /api/retry``: run the loop again after it failed (the page shows the error).

Errors are JSON ``{"detail": "..."}`` with 401 (token missing or wrong), 404 (unknown query or
picture), 409 (a round that is not the one waiting, or one that is training) and 422 (a label outside
{0, 1}, a malformed body); nothing is written for any of them. Bound to 127.0.0.1 by default; on any
other address every request needs the random token printed in the page's URL.
"""

import ipaddress
import secrets
import socket
from importlib import resources
from typing import Literal

from ..utils.errors import UserError
from .session import LabelRequestError, LabelSession

# no `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at run time,
# and those name classes local to create_app

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def page_html() -> str:
    return resources.files("retinalab.labelling").joinpath("page.html").read_text()


def create_app(session: LabelSession, token: str | None = None):
    """The FastAPI app of the labelling page over ``session``; with ``token``, every request must carry
    it (``?token=`` in the URL, or the ``X-Retinalab-Token`` header)."""
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
    from pydantic import BaseModel, ConfigDict

    class Answer(BaseModel):
        model_config = ConfigDict(extra="forbid")
        round: int
        query_id: str
        label: Literal[0, 1]

    class Unanswer(BaseModel):
        model_config = ConfigDict(extra="forbid")
        round: int
        query_id: str

    def check_token(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("x-retinalab-token") or request.query_params.get("token") or ""
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "this page needs the token printed by `retinalab label` (…/?token=…)")

    app = FastAPI(
        title="retinalab label", dependencies=[Depends(check_token)], docs_url=None, redoc_url=None, openapi_url=None
    )

    @app.exception_handler(LabelRequestError)
    async def refused(_request: Request, e: LabelRequestError) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=e.status)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return page_html()

    @app.get("/api/state")
    def state() -> dict:
        return session.snapshot()

    @app.post("/api/answer")
    def answer(a: Answer) -> dict:
        return session.answer(a.round, a.query_id, a.label)

    @app.post("/api/unanswer")
    def unanswer(a: Unanswer) -> dict:
        return session.unanswer(a.round, a.query_id)

    @app.post("/api/retry")
    def retry() -> dict:
        if session.status != "error":
            raise LabelRequestError("the loop has not failed; nothing to retry", 409)
        session.train()
        return session.snapshot()

    @app.get("/api/files/{round_}/{query_id}/{kind}")
    def picture(round_: int, query_id: str, kind: str) -> FileResponse:
        return FileResponse(
            session.file(round_, query_id, kind), media_type="image/png", headers={"Cache-Control": "no-store"}
        )

    return app


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve(
    session: LabelSession,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    open_browser: bool = False,
    log_level: str = "warning",
) -> None:
    """Serve the page until Ctrl-C; print its URL (with the token where ``host`` is not loopback)."""
    import uvicorn

    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(16)
    port = port or free_port(host)
    try:  # a clear message before uvicorn's own (which exits the process)
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as e:
        raise UserError(
            f"cannot serve on {host}:{port} ({e.strerror or e}); another program (another `retinalab label`?) uses it: "
            "pass --port 0 for any free port"
        ) from None
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    # lifespan off: the app has no start-up or shut-down work, and uvicorn would log Ctrl-C as a lifespan error
    config = uvicorn.Config(create_app(session, token), host=host, port=port, log_level=log_level, lifespan="off")
    server = uvicorn.Server(config)
    print(
        f"retinalab label: {session.run}: open {url} (Ctrl-C stops; every answer is saved as it is given)", flush=True
    )
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    server.run()
