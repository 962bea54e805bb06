"""retinalab.experiments.launch: CPU jobs start from a fork server that has imported torch and Lightning, and still
behave as processes of their own (session, log, environment, thread share, exit code, stop)."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from retinalab.experiments import launch
from retinalab.experiments.launch import Job, Slot, run_jobs

PROBE = (
    "import os, sys; preloaded = 'torch' in sys.modules; import torch; "
    "print('preloaded', preloaded, 'own-session', os.getsid(0) == os.getpid(), 'threads', torch.get_num_threads(), "
    "'env', os.environ.get('PROBE_VAR'), os.environ.get('RETINALAB_THREADS'), 'argv', sys.argv[1:], flush=True)"
)


@pytest.fixture(autouse=True)
def fresh_fork_server():
    """Each test starts its own fork server (its environment is the one the test sets), and stops it."""
    from multiprocessing import forkserver

    forkserver._forkserver._stop()
    launch._server_env = None
    yield
    forkserver._forkserver._stop()
    launch._server_env = None


def _probe(tmp_path, name: str, *args: str, env: dict[str, str] | None = None) -> Job:
    return Job(name, [sys.executable, "-c", PROBE, *args], tmp_path / f"{name}.log", env or {})


def _fields(log) -> dict[str, str]:
    words = log.read_text().split()
    return {
        "preloaded": words[1],
        "own-session": words[3],
        "threads": words[5],
        "var": words[7],
        "slot": words[8],
        "argv": " ".join(words[10:]),
    }


def test_cpu_jobs_start_from_the_fork_server_as_processes_of_their_own(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBE_VAR", "parent")
    slots = [Slot(None, 1), Slot(None, 1)]
    jobs = [
        _probe(tmp_path, "a", "x"),
        _probe(tmp_path, "b", "y", "z"),
        Job("exit3", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "exit3.log"),
        Job("raises", [sys.executable, "-c", "raise RuntimeError('boom in a job')"], tmp_path / "raises.log"),
    ]
    script = tmp_path / "script.py"
    script.write_text("import sys\nprint('script', __name__, sys.argv[1:], sys.path[0])\n")
    jobs.append(Job("script", [sys.executable, str(script), "--flag"], tmp_path / "script.log"))
    codes = run_jobs(jobs, slots)
    assert codes == {"a": 0, "b": 0, "exit3": 3, "raises": 1, "script": 0}
    a, b = _fields(tmp_path / "a.log"), _fields(tmp_path / "b.log")
    # torch was there before the job imported it: the job did not pay for the import
    assert a["preloaded"] == b["preloaded"] == "True"
    assert a["own-session"] == "True" and a["threads"] == "1" and a["slot"] == "1" and a["var"] == "parent"
    assert a["argv"] == "['x']" and b["argv"] == "['y', 'z']"
    assert "RuntimeError: boom in a job" in (tmp_path / "raises.log").read_text()
    assert (tmp_path / "script.log").read_text().split()[:3] == ["script", "__main__", "['--flag']"]
    assert (
        str(tmp_path) in (tmp_path / "script.log").read_text()
    )  # the script's folder is on sys.path, as python puts it


def test_jobs_the_fork_server_cannot_serve_run_as_plain_subprocesses(tmp_path, monkeypatch):
    """A job whose environment differs from the fork server's in a variable a module may have read at
    import (here one of its own), and every job under RETINALAB_FORK_SERVER=0, run as subprocesses."""
    run_jobs([_probe(tmp_path, "warm")], [Slot(None, 1)])  # the fork server is up
    run_jobs([_probe(tmp_path, "own-env", env={"PROBE_VAR": "job"})], [Slot(None, 2)])
    got = _fields(tmp_path / "own-env.log")
    assert got["preloaded"] == "False" and got["var"] == "job" and got["slot"] == "2"
    monkeypatch.setenv("RETINALAB_FORK_SERVER", "0")
    run_jobs([_probe(tmp_path, "plain")], [Slot(None, 1)])
    assert _fields(tmp_path / "plain.log")["preloaded"] == "False"


def test_a_forked_job_is_stopped_with_its_session(tmp_path):
    assert launch._forkable([sys.executable, "-c", "pass"], dict(os.environ))
    proc = launch._Forked(
        [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
        tmp_path / "s.log",
        dict(os.environ),
    )
    deadline = time.monotonic() + 60
    while (
        "started" not in ((tmp_path / "s.log").read_text() if (tmp_path / "s.log").exists() else "")
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert proc.poll() is None
    launch._stop(proc, grace=10)
    assert proc.returncode == -signal.SIGTERM


def test_the_parent_main_module_is_not_run_again_in_a_forked_job(tmp_path):
    """multiprocessing would import the parent's __main__ in each child: an unguarded script that calls
    run_jobs (or `python -m retinalab study --parallel`) would run itself again there, job after job."""
    parent = tmp_path / "parent.py"
    parent.write_text(
        "import sys\nfrom pathlib import Path\nfrom retinalab.experiments.launch import Job, Slot, run_jobs\n"
        "print('parent ran', flush=True)\n"
        "codes = run_jobs([Job('j', [sys.executable, '-c', 'print(\"job ran\")'], "
        f"Path({str(tmp_path / 'j.log')!r}))], [Slot(None, 1)])\n"
        "print('codes', codes, flush=True)\n"
    )
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "RETINALAB_FORK_SERVER"}
    out = subprocess.run(
        [sys.executable, str(parent)], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("parent ran") == 1 and "codes {'j': 0}" in out.stdout
    assert (tmp_path / "j.log").read_text() == "job ran\n"
