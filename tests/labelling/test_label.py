"""``retinalab label``: the labelling page's API, its journal, locking and resumption, the Label Studio
files, and (where Chromium is installed) the page itself driven by key presses in a headless browser."""

from __future__ import annotations

import csv
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from retinalab.active.oracle import LabelFileError
from retinalab.cli import main
from retinalab.labelling.server import create_app, free_port, is_loopback
from retinalab.labelling.session import LabelSession
from retinalab.utils.runs import RunBusyError
from tests.helpers.paths import REPO

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def walkthrough() -> list[list[str]]:
    """The commands of the README's "Label patches yourself", as a newcomer types them."""
    text = (REPO / "README.md").read_text().split("## Label patches yourself", 1)[1].split("\n## ", 1)[0]
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line.split("#", 1)[0]) for line in block.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def human_run(tmp_path_factory):
    """The README's walkthrough (a synthetic e-ophtha set, conf/active/synthetic_human.yaml), up to the run
    waiting for round 0's labels; the README's relative folders are made absolute under a temporary folder,
    and the cache goes there too."""
    import yaml

    base = tmp_path_factory.mktemp("label")
    synth, active, label = walkthrough()
    assert [c[:2] for c in (synth, active, label)] == [
        ["retinalab", "synth"],
        ["retinalab", "active"],
        ["retinalab", "label"],
    ]
    config = yaml.safe_load((REPO / active[active.index("--config") + 1]).read_text())
    data, out = synth[synth.index("--out") + 1], label[label.index("--run") + 1]
    assert config["root"] == data and config["out_dir"] == out  # the three commands fit together as written
    assert main([*synth[1:], "--out", str(base / data), "--workers", "1"]) == 0
    argv = [
        *active[1:],
        f"--root={base / data}",
        f"--out_dir={base / out}",
        f"--cache_dir={base / 'cache'}",
        "--progress=false",
        "--accelerator=cpu",
    ]
    argv[argv.index("--config") + 1] = str(REPO / argv[argv.index("--config") + 1])
    assert main(argv) == 0
    return base / out


@pytest.fixture
def run(human_run, tmp_path):
    """A fresh copy of the waiting run (the patch cache is shared)."""
    return Path(shutil.copytree(human_run, tmp_path / "run"))


def truth(run: Path, round_: int) -> dict[str, int]:
    """The masks' answer to each query of a round (the synthetic data knows them)."""
    rows = list(csv.DictReader((run / "queries" / f"round_{round_:03d}" / "queries.csv").open()))
    pool = _pool(_config(run))
    return {r["query_id"]: int(pool.labels[int(r["item"])] == 1) for r in rows}


def _config(run: Path) -> dict:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())


_POOLS: dict = {}


def _pool(cfg: dict):
    from retinalab.active import ExudatePatchConfig, ExudatePatches
    from retinalab.datasets import read_dataset

    key = cfg["cache_dir"]
    if key not in _POOLS:
        records = read_dataset("eophtha", cfg["root"], **cfg["reader_args"])
        _POOLS[key] = ExudatePatches.build(
            records, ExudatePatchConfig(**cfg["patches"]), cfg["cache_dir"], progress=False
        )
    return _POOLS[key]


def wait_until(cond, timeout: float = 120.0) -> None:
    end = time.time() + timeout
    while not cond():
        assert time.time() < end, "timed out"
        time.sleep(0.1)


def client(session: LabelSession, token: str | None = None):
    from fastapi.testclient import TestClient

    return TestClient(create_app(session, token))


# ---------------------------------------------------------------- the API
def test_answers_are_journalled_at_once_and_bad_requests_write_nothing(run):
    with LabelSession(run) as session:
        c = client(session)
        state = c.get("/api/state").json()
        assert state["status"] == "labelling" and state["round"] == 0 and state["total"] == 8 and state["answered"] == 0
        q0, q1 = state["queries"][0]["id"], state["queries"][1]["id"]
        assert state["queries"][0]["probability"] is None  # round 0: no model yet
        page = c.get("/")
        assert page.status_code == 200 and "retinalab label" in page.text and "/api/answer" in page.text
        for kind in ("patch", "photo", "plain"):
            r = c.get(f"/api/files/0/{q0}/{kind}")
            assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
        assert c.get(f"/api/files/0/{q0}/heat").status_code == 404  # round 0 has no heatmap
        assert c.get(f"/api/files/0/{q0}/mask").status_code == 404

        r = c.post("/api/answer", json={"round": 0, "query_id": q0, "label": 1})
        assert r.status_code == 200 and r.json()["answered"] == 1
        journal = json.loads((run / "answers.json").read_text())
        (entry,) = journal.values()
        assert entry["label"] == 1 and entry["round"] == 0 and entry["source"] == "page"
        before = (run / "answers.json").read_bytes()
        bad = [
            ({"round": 0, "query_id": "q9999", "label": 1}, 404, "no query"),
            ({"round": 0, "query_id": q1, "label": 2}, 422, "label"),
            ({"round": 0, "query_id": q1, "label": "exudate"}, 422, "label"),
            ({"round": 0, "query_id": q1}, 422, "label"),
            ({"round": 0, "query_id": q1, "label": 1, "extra": 1}, 422, "extra"),
            ({"round": 3, "query_id": q1, "label": 1}, 409, "not the round waiting"),
        ]
        for body, status, words in bad:
            r = c.post("/api/answer", json=body)
            assert r.status_code == status, (body, r.text)
            assert words in json.dumps(r.json()["detail"]), r.text
        assert c.post("/api/unanswer", json={"round": 0, "query_id": "q9999"}).status_code == 404
        assert (run / "answers.json").read_bytes() == before
        # undo takes the answer back out of the journal
        assert c.post("/api/unanswer", json={"round": 0, "query_id": q0}).json()["answered"] == 0
        assert json.loads((run / "answers.json").read_text()) == {}
        assert c.post("/api/retry").status_code == 409


def test_a_token_guards_every_request_off_loopback(run):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    with LabelSession(run) as session:
        c = client(session, token="s3cret")
        q0 = session.snapshot()["queries"][0]["id"]
        assert c.get("/").status_code == 401 and c.get("/api/state?token=wrong").status_code == 401
        r = c.post("/api/answer", json={"round": 0, "query_id": q0, "label": 1})
        assert r.status_code == 401 and "token" in r.json()["detail"]
        assert not (run / "answers.json").exists()
        assert c.get("/?token=s3cret").status_code == 200
        assert c.get("/api/state", headers={"X-Retinalab-Token": "s3cret"}).json()["round"] == 0
        assert c.get(f"/api/files/0/{q0}/patch?token=s3cret").status_code == 200


def test_a_complete_round_trains_and_the_next_round_appears(run, caplog):
    answers = truth(run, 0)
    caplog.set_level(logging.INFO, logger="retinalab")
    with LabelSession(run) as session:
        c = client(session)
        for qid, y in answers.items():
            state = c.post("/api/answer", json={"round": 0, "query_id": qid, "label": y}).json()
        assert state["status"] == "training"
        busy = c.post("/api/answer", json={"round": 0, "query_id": qid, "label": y})
        assert busy.status_code == 409 and "being trained" in busy.json()["detail"]
        wait_until(lambda: session.status != "training")
        state = c.get("/api/state").json()
        assert state["status"] == "labelling", state["error"]
        assert state["round"] == 1 and state["total"] == 4 and state["labels"] == 8
        assert [h["round"] for h in state["history"]] == [0] and 0 <= state["history"][0]["test/f1"] <= 1
        q = state["queries"][0]
        assert 0 <= q["probability"] <= 1 and q["heat"] and q["score"] is not None
        assert c.get(f"/api/files/1/{q['id']}/heat").status_code == 200
        low, high = q["heat_range"]
        # the legend's scale holds the query's own score (from another scoring pass: to float32's precision)
        assert low - 1e-4 <= q["score"] <= high + 1e-4 and low < high
    # the terminal speaks to the page's user, not to the CSV workflow's
    assert "round 1: 4 patches are ready to label on the page" in caplog.text and "labels.csv" not in caplog.text
    saved = json.loads((run / "state.json").read_text())
    journal = json.loads((run / "answers.json").read_text())
    assert saved["round"] == 0 and {str(k): v for k, v in saved["labelled"].items()} == {
        k: v["label"] for k, v in journal.items()
    }


def test_undo_takes_back_the_last_answer_also_after_the_page_was_reopened(run):
    """The page's undo comes from the journal's order: a reload (a new session) undoes what was answered
    before it, last first, and an answer given again moves to the end."""
    order = list(truth(run, 0))
    with LabelSession(run) as session:
        c = client(session)
        for qid in (order[3], order[1], order[5]):
            c.post("/api/answer", json={"round": 0, "query_id": qid, "label": 0})
        c.post("/api/answer", json={"round": 0, "query_id": order[3], "label": 1})  # changed its mind
    with LabelSession(run) as session:  # the page reopened
        c = client(session)
        assert c.get("/api/state").json()["undo"] == [order[1], order[5], order[3]]
        state = c.post("/api/unanswer", json={"round": 0, "query_id": order[3]}).json()
        assert state["undo"] == [order[1], order[5]] and state["answered"] == 2


def test_a_second_page_or_a_cli_resume_on_the_same_run_is_refused(run, capsys):
    with LabelSession(run):
        with pytest.raises(RunBusyError, match="retinalab label"):
            LabelSession(run).open()
        argv = ["active", "--config", str(run / "config.yaml"), "--out_dir", str(run), "--resume"]
        assert main(argv) == 2
        assert "in use by retinalab label" in capsys.readouterr().err
    with LabelSession(run):  # released when the first one closed
        pass


def test_a_port_in_use_is_one_line(run, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["label", "--run", str(run), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "--port 0" in err
    with LabelSession(run):  # the failed start released the run's lock
        pass


def test_label_refuses_a_simulated_run_and_a_folder_without_a_run(tmp_path, run, capsys):
    assert main(["label", "--run", str(tmp_path / "nothing")]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    cfg = (run / "config.yaml").read_text().replace("oracle: human", "oracle: simulated")
    (run / "config.yaml").write_text(cfg)
    assert main(["label", "--run", str(run)]) == 2
    assert "oracle: human" in capsys.readouterr().err


def test_a_killed_server_resumes_at_the_first_unanswered_query(run):
    """`retinalab label` as a user starts it, killed (SIGKILL) after three answers: the three are in the
    journal, the lock is free again, and a new session opens on the fourth query."""
    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "retinalab", "label", "--run", str(run), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert f"open http://127.0.0.1:{port}/ " in line, line
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _up(url), 60)
        state = httpx.get(f"{url}/api/state").json()
        for q in state["queries"][:3]:
            assert (
                httpx.post(f"{url}/api/answer", json={"round": 0, "query_id": q["id"], "label": 0}).status_code == 200
            )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(json.loads((run / "answers.json").read_text())) == 3
    with LabelSession(run) as session:
        state = session.snapshot()
        assert state["answered"] == 3 and [q["label"] for q in state["queries"]][:4] == [0, 0, 0, None]


def test_ctrl_c_or_sigterm_stops_the_page_quietly_and_frees_the_run(run):
    """Stopping `retinalab label` with Ctrl-C or SIGTERM (a scheduler, `kill`, `timeout`) exits 0 without a
    traceback, and leaves no .lock behind (a .lock naming a dead process was left after SIGTERM)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "retinalab", "label", "--run", str(run), "--port", str(port)],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert f"open http://127.0.0.1:{port}/ " in proc.stdout.readline()
        wait_until(lambda port=port: _up(f"http://127.0.0.1:{port}"), 60)
        proc.send_signal(sig)
        rest = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0 and "Traceback" not in rest and "ERROR" not in rest, rest
        assert not (run / ".lock").exists()


def _up(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/api/state", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# ---------------------------------------------------------------- Label Studio
def test_label_studio_export_and_import_round_trip(run, tmp_path, capsys):
    assert main(["label", "--run", str(run), "--export-ls"]) == 0
    assert "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT" in capsys.readouterr().out
    folder = run / "queries" / "round_000" / "label_studio"
    tasks = json.loads((folder / "tasks.json").read_text())
    config = (folder / "label_config.xml").read_text()
    assert len(tasks) == 8 and '<Choice value="exudate" hotkey="1"/>' in config and "$photo" in config
    for t in tasks:
        rel = t["data"]["image"].split("?d=")[1]
        assert t["data"]["image"].startswith("/data/local-files/?d=") and (run / "queries" / rel).is_file()
        assert t["data"]["round"] == 0 and "predictions" not in t  # round 0: no model to pre-annotate with
    answers = truth(run, 0)
    qids = sorted(answers)

    def annotated(task: dict, word: str, cancelled: bool = False) -> dict:
        result = [{"from_name": "label", "to_name": "patch", "type": "choices", "value": {"choices": [word]}}]
        return {
            **task,
            "annotations": [
                {"id": 1, "result": result, "was_cancelled": cancelled, "updated_at": "2026-12-03T10:00:00Z"}
            ],
        }

    by_id = {t["data"]["query_id"]: t for t in tasks}
    export = [annotated(by_id[q], "exudate" if answers[q] else "healthy") for q in qids[:5]]
    export.append(annotated(by_id[qids[5]], "maybe"))  # an unknown label
    export.append(annotated(by_id[qids[6]], "healthy", cancelled=True))  # skipped in Label Studio: no label
    other = json.loads(json.dumps(by_id[qids[7]]))
    other["data"]["round"] = 4
    export.append(annotated(other, "healthy"))  # another round's task
    ghost = json.loads(json.dumps(by_id[qids[0]]))
    ghost["data"]["query_id"] = "q9999"
    export.append(annotated(ghost, "healthy"))
    file = tmp_path / "export.json"
    file.write_text(json.dumps(export))
    assert main(["label", "--run", str(run), "--import-ls", str(file)]) == 2
    err = capsys.readouterr().err
    assert "'maybe'" in err and "q9999" in err and "round 4" in err and "5 valid labels were journalled" in err
    journal = json.loads((run / "answers.json").read_text())
    assert len(journal) == 5 and {v["source"] for v in journal.values()} == {"label-studio"}
    # the rest, in Label Studio's JSON_MIN export: the journal completes and the page sees it all answered
    minimal = [
        {**by_id[q]["data"], "id": i, "label": "exudate" if answers[q] else "healthy"} for i, q in enumerate(qids[5:])
    ]
    file.write_text(json.dumps(minimal))
    assert main(["label", "--run", str(run), "--import-ls", str(file)]) == 0
    assert "3 labels journalled" in capsys.readouterr().out
    with LabelSession(run) as session:
        assert session.snapshot()["answered"] == 8
    # the loop takes the imported labels as the oracle's
    assert main(["active", "--config", str(run / "config.yaml"), "--out_dir", str(run), "--resume"]) == 0
    saved = json.loads((run / "state.json").read_text())
    assert saved["round"] == 0 and {int(k): v for k, v in saved["labelled"].items()} == {
        int(k): v["label"] for k, v in json.loads((run / "answers.json").read_text()).items()
    }
    # round 1's tasks carry the model's probability as a pre-annotation
    assert (
        main(
            [
                "label",
                "--run",
                str(run),
                "--export-ls",
                str(tmp_path / "r1.json"),
                "--ls-url-prefix",
                "http://files.lab/q",
            ]
        )
        == 0
    )
    r1 = json.loads((tmp_path / "r1.json").read_text())
    assert len(r1) == 4 and r1[0]["data"]["image"].startswith("http://files.lab/q/round_001/patches/")
    pred = r1[0]["predictions"][0]
    assert 0.5 <= pred["score"] <= 1 and pred["result"][0]["value"]["choices"][0] in ("exudate", "healthy")
    assert abs(max(r1[0]["data"]["probability"], 1 - r1[0]["data"]["probability"]) - pred["score"]) < 1e-3


def test_label_studio_import_refuses_what_is_not_an_export(run, tmp_path):
    from retinalab.labelling.label_studio import import_annotations

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LabelFileError, match="not a Label Studio JSON export"):
        import_annotations(run, bad)
    bad.write_text(json.dumps({"tasks": []}))
    with pytest.raises(LabelFileError, match="JSON list of tasks"):
        import_annotations(run, bad)
    bad.write_text(json.dumps([{"data": {"image": "x.png"}}]))
    with pytest.raises(LabelFileError, match="no data.query_id"):
        import_annotations(run, bad)
    assert not (run / "answers.json").exists()


# ---------------------------------------------------------------- the page in a browser
def _browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if CHROMIUM is None or sync_playwright is None:
        if os.environ.get("RETINALAB_REQUIRE_BROWSER") == "1":
            pytest.fail("RETINALAB_REQUIRE_BROWSER=1 but Chromium or Playwright is missing (.ci/run installs them)")
        pytest.skip("the browser test needs Debian's chromium and the playwright package")
    return sync_playwright


def fov_fractions(run: Path, round_: int) -> dict[str, float]:
    """How much of each query's patch lies inside the field of view, measured on the photograph the pool
    was cut from (the preprocessing and field-of-view mask the pool uses)."""
    from retinalab.active import ExudatePatchConfig
    from retinalab.active.pool import fov_mask
    from retinalab.datasets import read_dataset
    from retinalab.preprocessing.fundus import load_fundus

    cfg = _config(run)
    pc = ExudatePatchConfig(**cfg["patches"])
    records = {r.image_id: r for r in read_dataset("eophtha", cfg["root"], **cfg["reader_args"])}
    out = {}
    for row in csv.DictReader((run / "queries" / f"round_{round_:03d}" / "queries.csv").open()):
        pre = load_fundus(
            records[row["image_id"]], pc.image_size, pc.crop_fov, pc.normalize, (pc.lesion,), pc.fast_decode
        )
        fov, half = fov_mask(pre.image), int(row["patch_size"]) // 2
        y, x = int(row["centre_y"]) - half, int(row["centre_x"]) - half
        out[row["query_id"]] = float(fov[y : y + 2 * half, x : x + 2 * half].mean())
    return out


def test_round_0_asks_about_patches_inside_the_field_of_view_and_says_how_it_chose_them(run):
    inside = fov_fractions(run, 0)
    assert len(inside) == 8 and min(inside.values()) >= _config(run)["patches"]["min_fov_fraction"] == 0.9
    with LabelSession(run) as session:
        shown = session.snapshot()
    assert shown["question"] == "Is there a hard exudate in this patch?"
    assert shown["answer_words"] == ["no hard exudate", "hard exudate"]
    assert shown["note"].startswith("Round 0: 8 patches drawn at random from the training photographs' grid")
    assert "no model exists before the first answers" in shown["note"]


def test_a_round_labelled_with_key_presses_in_a_real_browser(run, tmp_path):
    """The README's walkthrough as a clinician follows it: headless Chromium; the question and how round 0
    was chosen are on the page; keys 1/0, a skip, an undo, and an undo after a reload (from the journal);
    the round trains and round 1 appears on the same page, whose heatmap has its legend and stays on
    across a reload; the journal holds what was typed."""
    import uvicorn

    sync_playwright = _browser()
    answers = truth(run, 0)
    assert min(fov_fractions(run, 0).values()) >= 0.9  # no query the page shows lies mostly outside the retina
    with LabelSession(run) as session:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(session), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_until(lambda: server.started, 30)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=CHROMIUM,
                    args=[
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-quic",
                        "--no-first-run",
                        "--disable-background-networking",
                        "--disable-component-update",
                        "--disable-sync",
                    ],
                )
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_selector("#progress:has-text('0 of 8 in round 0')")
                assert page.inner_text("#question") == "Is there a hard exudate in this patch?"
                assert page.is_visible("#question") and "no model exists" in page.inner_text("#note")
                assert "yes: hard exudate" in page.inner_text("#lesion") and "no hard exudate" in page.inner_text(
                    "#healthy"
                )
                order = [q["id"] for q in session.snapshot()["queries"]]
                key = {qid: str(answers[qid]) for qid in order}
                page.keyboard.press(key[order[0]])  # q0 answered, q1 shown
                page.keyboard.press("s")  # q1 skipped: q2 shown
                page.keyboard.press("1" if key[order[2]] == "0" else "0")  # q2 answered wrongly ...
                page.keyboard.press("u")  # ... and taken back: q2 shown again
                page.wait_for_selector("#progress:has-text('1 of 8 in round 0')")
                for qid in order[2:]:
                    page.keyboard.press(key[qid])
                page.wait_for_selector("#progress:has-text('7 of 8 in round 0')")
                assert "q0001" in page.inner_text("#qid")  # back to the skipped query
                page.reload()  # a closed and reopened page resumes at the first unanswered query ...
                page.wait_for_selector("#progress:has-text('7 of 8 in round 0')")
                assert "q0001" in page.inner_text("#qid")
                page.keyboard.press("u")  # ... and undoes the last answer given before the reload
                page.wait_for_selector("#progress:has-text('6 of 8 in round 0')")
                assert order[7] in page.inner_text("#qid")
                page.keyboard.press(key[order[7]])
                page.wait_for_selector("#progress:has-text('7 of 8 in round 0')")
                page.keyboard.press(key[order[1]])
                page.wait_for_selector("#progress:has-text('0 of 4 in round 1')", timeout=120_000)
                assert page.inner_text("#note").startswith("Round 1: the 4 patches with the highest expected gradient")
                page.keyboard.press("h")  # the heatmap over the photograph, with its legend
                page.wait_for_selector("#heat-img:not(.hidden)")
                page.wait_for_selector("#legend:not(.hidden)")
                assert "bright = its label would change the model most" in page.inner_text("#legend")
                assert "lowest expected gradient length in this photograph" in page.inner_text("#legend")
                page.reload()  # the toggle stays on
                page.wait_for_selector("#progress:has-text('0 of 4 in round 1')")
                page.wait_for_selector("#heat-img:not(.hidden)")
                shot = tmp_path / "page.png"
                page.screenshot(path=str(shot))
                if os.environ.get("RETINALAB_SCREENSHOT"):
                    shutil.copy(shot, os.environ["RETINALAB_SCREENSHOT"])
                browser.close()
        finally:
            server.should_exit = True
            thread.join(30)
    from PIL import Image

    assert Image.open(shot).size == (1280, 860)
    journal = json.loads((run / "answers.json").read_text())
    rows = {
        r["query_id"]: int(r["item"]) for r in csv.DictReader((run / "queries" / "round_000" / "queries.csv").open())
    }
    assert {q: journal[str(i)]["label"] for q, i in rows.items()} == answers
    saved = json.loads((run / "state.json").read_text())
    assert saved["round"] == 0 and saved["pending"]["round"] == 1 and len(saved["labelled"]) == 8
