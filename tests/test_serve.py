"""python -m fastmlp.serve's JSON API against a real uvicorn on 127.0.0.1 and a free port."""
import json
import math
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("plotly")

from fastmlp import checkpoint as ckpt_io  # noqa: E402
from fastmlp.serve.inside import context_indices, softmax  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, work, words=None, *extra):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "fastmlp.serve", "-o", str(work), "--port", str(self.port), *map(str, extra)]
        if words is not None:
            args += ["-i", str(words)]
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.banner = ""
        while "fastmlp: http://" not in self.banner:
            line = self.p.stderr.readline()
            assert line, self.banner + self.p.stderr.read()
            self.banner += line

    def call(self, path, body=None, method=None):
        data = None if body is None and method != "POST" else json.dumps(body or {}).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method or ("POST" if data else "GET"),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def get(self, path, **query):
        return self.call(path + ("?" + urllib.parse.urlencode(query) if query else ""))

    def wait(self, pred, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            s = self.get("/api/state")[1]
            if pred(s):
                return s
            time.sleep(0.1)
        raise AssertionError(f"timed out: {s}")

    def stop(self, sig=signal.SIGINT):
        self.p.send_signal(sig)
        out, err = self.p.communicate(timeout=60)
        return self.p.returncode, err


@pytest.fixture
def words(tmp_path):
    from conftest import make_words

    f = tmp_path / "words.txt"
    f.write_text("\n".join(make_words(600, seed=3)) + "\n")
    return f


SMALL = {"n_hidden": 32, "max_steps": 200_000, "eval_interval": 2000, "init": "scaled"}


def test_train_pause_continue_next_sample_and_stop(tmp_path, words):
    s = Server(tmp_path / "run", words)
    try:
        code, st = s.get("/api/state")
        assert code == 200 and st["config"] is None and st["step"] == 0
        assert s.get("/api/next", context="ka")[0] == 409  # no model yet
        code, st = s.call("/api/train/start", SMALL)
        assert code == 200 and st["running"] and st["config"]["n_hidden"] == 32, st
        code, again = s.call("/api/train/start", SMALL)  # one training at a time
        assert code == 409 and "already running" in again["error"]
        st = s.wait(lambda x: x["dev"])  # progress and a dev point
        assert st["loss"]["steps"] and st["steps_per_s"] > 0
        code, st = s.call("/api/train/pause", method="POST")
        assert code == 200 and not st["running"]
        paused = st["step"]
        assert 0 < paused < SMALL["max_steps"]
        # the checkpoint was saved on pause; next is the model's own forward on that context
        ck = ckpt_io.load(tmp_path / "run")
        assert ck.step == paused
        code, nx = s.get("/api/next", context="kalim")
        p = softmax(ck.model.forward(context_indices(ck.vocab, "kalim", ck.model.block_size))[0])
        assert code == 200 and nx["vocab"] == list(ck.vocab.itos) and nx["context"] == "kalim"
        np.testing.assert_allclose(nx["probs"], p, rtol=0, atol=5e-7 + 1e-12)  # the same forward; 6 decimals sent
        assert abs(sum(nx["probs"]) - 1) < 1e-4
        code, sm = s.get("/api/sample", n=5, prefix="ka", temperature=0.8, top_k=5, seed=1)
        assert code == 200 and len(sm["samples"]) == 5
        for x in sm["samples"]:
            assert x["name"].startswith("ka") and isinstance(x["new"], bool) and x["steps"]
            assert all(len(step["probs"]) == ck.vocab.size and step["char"] in ck.vocab.itos for step in x["steps"])
            assert all(sum(1 for q in step["probs"] if q > 0) <= 5 for step in x["steps"])  # top-k
        assert s.get("/api/sample", n=5, prefix="ka", temperature=0.8, top_k=5, seed=1)[1] == sm  # a seed repeats
        # continue: the same run goes on from where it paused
        code, st = s.call("/api/train/start", {})
        assert code == 200 and st["running"]
        s.wait(lambda x: x["step"] > paused + 1000)
        # a setting of the paused run cannot change (the --resume rules); what --resume may change does
        s.call("/api/train/pause", method="POST")
        code, err = s.call("/api/train/start", {"n_hidden": 64})
        assert code == 400 and "cannot change n_hidden" in err["error"]
        code, st = s.call("/api/train/start", {"eval_interval": 3000, "max_steps": 250_000})
        assert code == 200 and st["config"]["eval_interval"] == 3000 and st["max_steps"] == 250_000
        s.call("/api/train/pause", method="POST")
        # stopped mid-run, the server saves the checkpoint
        s.call("/api/train/start", {})
        s.wait(lambda x: x["running"])
        time.sleep(0.5)
        rc, err = s.stop()
        assert rc == 130 and "saved" in err and "Traceback" not in err, err  # as the training command's Ctrl-C
        assert ckpt_io.load(tmp_path / "run").step > paused + 1000
    finally:
        if s.p.poll() is None:
            s.p.kill()
    # started again on it: the run opens, with its curves, and can be sampled at once
    s = Server(tmp_path / "run", words)
    try:
        assert "step" in s.banner
        st = s.get("/api/state")[1]
        assert st["step"] > paused and st["dev"] and not st["running"]
        assert s.get("/api/sample", n=2)[0] == 200
        code, st = s.call("/api/train/reset", method="POST")
        assert code == 200 and st["config"] is None
        code, err = s.call("/api/train/start", dict(SMALL, max_steps=300))  # the checkpoint is not lost unasked
        assert code == 409 and "overwrite: true" in err["error"]
        code, st = s.call("/api/train/start", dict(SMALL, max_steps=300, overwrite=True))
        assert code == 200 and st["max_steps"] == 300
        s.wait(lambda x: not x["running"])
        assert (tmp_path / "run" / "metrics.json").is_file()  # a finished run ends as the command ends it
    finally:
        s.stop()


@pytest.mark.parametrize("path,query,msg", [
    ("/api/sample", {"temperature": "0"}, "temperature must be a number in (0, 100]"),
    ("/api/sample", {"temperature": "abc"}, "temperature must be a number, got 'abc'"),
    ("/api/sample", {"temperature": "nan"}, "temperature must be a number in"),
    ("/api/sample", {"n": "100000"}, "n must be an integer in [1, 100]"),
    ("/api/sample", {"top_k": "-1"}, "top_k must be an integer in [0, "),
    ("/api/sample", {"prefix": "k9"}, "prefix has characters the model does not know: '9'"),
    ("/api/sample", {"prefix": "ka.li"}, "prefix has characters the model does not know: '.'"),
    ("/api/sample", {"prefix": "a" * 100}, "prefix is longer than 64 characters"),
    ("/api/next", {"context": "zö"}, "context has characters the model does not know"),
    ("/api/nothing", {}, "no such page or API call: /api/nothing"),
])
def test_bad_queries_are_a_4xx_with_one_line(tmp_path, words, path, query, msg):
    s = Server(tmp_path / "run", words)
    try:
        s.call("/api/train/start", dict(SMALL, max_steps=300))
        s.wait(lambda x: not x["running"] and x["step"] == 300)
        code, body = s.get(path, **query)
        assert 400 <= code < 500 and set(body) == {"error"} and msg in body["error"], (code, body)
    finally:
        s.stop()


@pytest.mark.parametrize("body,msg", [
    ("not json", "the body must be JSON"),
    ([1, 2], "the body must be a JSON object"),
    ({"work_dir": "/etc"}, "unknown settings ['work_dir']"),  # no file path comes from the page
    ({"input_file": "/etc/passwd"}, "unknown settings ['input_file']"),
    ({"n_hidden": 0}, "n_hidden must be an integer in [1, "),
    ({"learning_rate": "fast"}, "learning_rate must be a number"),
    ({"preset": "slow"}, "preset must be one of"),
    ({"n_hidden": 16_000_000, "n_embd": 16_000_000}, "out of memory"),
])
def test_bad_settings_are_refused_and_nothing_starts(tmp_path, words, body, msg):
    s = Server(tmp_path / "run", words)
    try:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        req = urllib.request.Request(s.base + "/api/train/start", data=data, method="POST")
        try:
            urllib.request.urlopen(req, timeout=60)
            raise AssertionError("accepted")
        except urllib.error.HTTPError as e:
            code, err = e.code, json.loads(e.read())
        assert 400 <= code < 500 and msg in err["error"], (code, err)
        st = s.get("/api/state")[1]
        assert not st["running"]
    finally:
        s.stop()


def test_two_clients_see_the_same_run_and_a_closed_tab_stops_nothing(tmp_path, words):
    s = Server(tmp_path / "run", words)
    try:
        s.call("/api/train/start", dict(SMALL, max_steps=300_000))
        seen = [[], []]

        def listen(i):
            with urllib.request.urlopen(s.base + "/api/events", timeout=60) as r:
                for line in r:
                    if line.startswith(b"data: "):
                        seen[i].append(json.loads(line[6:]))
                    if len(seen[i]) >= 4:
                        return  # the tab closes

        threads = [threading.Thread(target=listen, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for i in range(2):
            ev = seen[i][-1]
            assert ev["state"]["config"]["max_steps"] == 300_000 and ev["inside"]["watched"]
            assert ev["inside"]["embedding"]["symbols"][0] == "."
        time.sleep(0.5)
        st = s.get("/api/state")[1]
        assert st["running"] and st["step"] > max(e["state"]["step"] for e in seen[0])  # it went on
    finally:
        s.stop()


def test_a_public_address_is_warned_about(tmp_path, words):
    s = Server(tmp_path / "run", words, "--host", "0.0.0.0")
    try:
        pass
    finally:
        rc, err = s.stop()
    assert "warning: listening on 0.0.0.0" in s.banner + err


def test_a_run_from_the_command_opens_and_goes_on_recording(tmp_path, words):
    r = subprocess.run([sys.executable, "-m", "fastmlp.train", "-i", str(words), "-o", str(tmp_path / "run"),
                        "--n-hidden", "32", "--max-steps", "300", "--no-progress"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    s = Server(tmp_path / "run", words)
    try:
        assert "step 300" in s.banner
        code, st = s.call("/api/train/start", {"max_steps": 600})
        assert code == 200, st
        s.wait(lambda x: not x["running"] and x["step"] == 600)
        ck = ckpt_io.load(tmp_path / "run")
        assert ck.step == 600 and len(ck.diag_steps) and ck.diag_steps[0] >= 300  # the Inside panel has records
    finally:
        s.stop()


def test_a_deep_batchnorm_run_trains_samples_and_shows_its_first_layer(tmp_path, words):
    s = Server(tmp_path / "run", words)
    try:
        code, st = s.call("/api/train/start", dict(SMALL, n_layers=3, batchnorm=True, init="kaiming"))
        assert code == 200 and st["config"]["n_layers"] == 3 and st["config"]["batchnorm"] is True, st
        with urllib.request.urlopen(s.base + "/api/events", timeout=60) as r:
            for line in r:
                if line.startswith(b"data: "):
                    ev = json.loads(line[6:])
                    if ev["inside"] and ev["inside"]["act"]:
                        break
        assert "gamma1" in ev["inside"]["update_data"]["log10"] and "W4" in ev["inside"]["update_data"]["log10"]
        assert 0 <= ev["inside"]["act"]["saturation"] <= 1
        s.call("/api/train/pause", method="POST")
        code, sm = s.get("/api/sample", n=3, seed=1)
        assert code == 200 and len(sm["samples"]) == 3
        assert ckpt_io.load(tmp_path / "run").model.n_layers == 3
    finally:
        s.stop()
