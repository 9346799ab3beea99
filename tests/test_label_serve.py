"""``imagewise label serve``: the labelling page by keyboard in headless chromium, leases that
keep two tabs apart, answers that survive a kill, resuming, review mode and bad input."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

import imagewise.io
import imagewise.label
from imagewise.label.items import open_session
from imagewise.label.server import LOOPBACK_HOSTS, create_label_app
from imagewise.label.session import LabelSession, Refused

from conftest import CLASSES, make_folder_dataset, run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LABEL_LINE = re.compile(r" into .* at (http://\S+)/$", re.MULTILINE)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small class folder tree (the classes a label may take)."""
    return make_folder_dataset(tmp_path_factory.mktemp("ldata") / "shapes", 4, corrupt=False)


def _pool(data: Path, folder: Path, count: int) -> list[Path]:
    """``count`` images to label (copies of the dataset's, named pool/NNN_CLASS.png)."""
    sources = sorted(data.glob("*/*.png"))
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(count):
        source = sources[i % len(sources)]
        images.append(folder / f"{i:03d}_{source.parent.name}.png")
        shutil.copy(source, images[-1])
    return images


def _queue(images: list[Path], guesses: list[str], path: Path) -> Path:
    """A queue as ``label next`` writes it."""
    lines = ["path,rank,reason,guess,probability,margin,entropy,cluster"]
    for rank, (image, guess) in enumerate(zip(images, guesses, strict=True), 1):
        lines.append(f"{image},{rank},uncertain,{guess},0.61,0.2,0.9,")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@contextmanager
def label_server(log: Path, *args: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """``python -m imagewise label serve ARGS --port 0``; yields its URL and process."""
    cmd = [sys.executable, "-m", "imagewise", "label", "serve", *args, "--port", "0"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not start in 60 s:\n{log.read_text()}")
            if found := LABEL_LINE.search(log.read_text()):
                url = found[1]
            time.sleep(0.1)
        while True:
            try:
                if httpx.get(url + "/api/info", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def page_server(session: LabelSession, out: Path) -> Iterator[str]:
    """The labelling app on a free loopback port, in a thread of this process; yields its URL."""
    import uvicorn

    from imagewise.serve.server import listen_socket, url_of, uvicorn_config
    from imagewise.serve.settings import ServeSettings

    sock = listen_socket("127.0.0.1", 0)
    app = create_label_app(session, out, hosts=LOOPBACK_HOSTS)
    server = uvicorn.Server(uvicorn_config(app, ServeSettings(port=0, access_log=False)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def _press(page: object, key: str) -> None:
    """Press ``key`` and wait until the page shows another image (or nothing left)."""
    before = page.get_attribute("#card", "data-id")  # type: ignore[attr-defined]
    page.keyboard.press(key)  # type: ignore[attr-defined]
    page.wait_for_function(  # type: ignore[attr-defined]
        "before => document.body.dataset.state === 'done' || (document.body.dataset.state "
        "=== 'ready' && document.getElementById('card').dataset.id !== before)",
        arg=before,
        timeout=10_000,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make test installs it)")
def test_page_labels_by_keyboard_with_undo_and_two_tabs_apart(data: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    images = _pool(data, tmp_path / "pool", 4)
    queue = _queue(images, ["circle", "square", "circle", "stripes"], tmp_path / "queue.csv")
    out = tmp_path / "labels.csv"
    errors: list[str] = []
    session = open_session(data, queue=queue, out=out)
    with page_server(session, out) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_selector("body[data-state=ready]")
        first = page.get_attribute("#card", "data-id")
        shown = (page.text_content("#guess"), page.text_content("#classes .selected"))
        keys = page.eval_on_selector_all("#classes kbd", "ks => ks.map(k => k.textContent)")
        # a second tab is handed another image while the first holds image 0
        other = browser.new_context().new_page()
        other.goto(url + "/")
        other.wait_for_selector("body[data-state=ready]")
        second_tab = other.get_attribute("#card", "data-id")
        other.goto("about:blank")  # leaving the page gives its image back (pagehide)
        time.sleep(0.5)
        _press(page, "Enter")  # image 0: the guess, circle
        _press(page, "3")  # image 1: stripes
        _press(page, "s")  # image 2: skipped, asked again at the end
        _press(page, "n")  # image 3: none of these
        _press(page, "Backspace")  # ... taken back: image 3 again
        undone = page.get_attribute("#card", "data-id")
        _press(page, "2")  # image 3: square
        _press(page, "1")  # image 2, the skipped one: circle
        done = page.get_attribute("body", "data-state")
        progress = page.text_content("#progress")
        browser.close()
    assert errors == []
    assert first == "0" and second_tab == "1"
    assert shown == ("guess: circle (61.0%)", "1circle")
    assert keys == ["1", "2", "3"]
    assert undone == "3" and done == "done"
    assert progress == "4 / 4 labelled"
    names = [f"pool/{image.name}" for image in images]
    assert _rows(out) == [
        {"path": names[0], "label": "circle", "labelled_by": "person"},
        {"path": names[1], "label": "stripes", "labelled_by": "person"},
        {"path": names[3], "label": "square", "labelled_by": "person"},
        {"path": names[2], "label": "circle", "labelled_by": "person"},
    ]
    assert json.loads((tmp_path / "labels.csv.state.json").read_text())["answers"] == {}


def test_two_tabs_never_get_the_same_image(data: Path, tmp_path: Path) -> None:
    _pool(data, tmp_path / "pool", 40)
    session = open_session(data, tmp_path / "pool", out=tmp_path / "labels.csv")
    client = TestClient(create_label_app(session, tmp_path / "labels.csv"))
    answered: dict[str, list[str]] = {}

    def label_all(name: str) -> None:
        tab = client.post("/api/tab").json()["tab"]
        answered[name] = []
        item = client.post("/api/next", json={"tab": tab}).json()["item"]
        while item is not None:
            answered[name].append(item["id"])
            body = {"tab": tab, "id": item["id"], "action": "label", "label": "circle"}
            response = client.post("/api/answer", json=body)
            assert response.status_code == 200, response.text
            item = response.json()["item"]

    threads = [threading.Thread(target=label_all, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not set(answered["a"]) & set(answered["b"])
    assert sorted(answered["a"] + answered["b"], key=int) == [str(i) for i in range(40)]
    assert len(_rows(tmp_path / "labels.csv")) == 40


def test_a_lease_expires_and_only_its_holder_answers(data: Path, tmp_path: Path) -> None:
    _pool(data, tmp_path / "pool", 2)
    session = open_session(data, tmp_path / "pool", out=tmp_path / "l.csv", lease_s=0.3)
    a, b = session.open_tab(), session.open_tab()
    assert session.next(a)["id"] == "0" and session.next(b)["id"] == "1"  # type: ignore[index]
    with pytest.raises(Refused, match="another tab"):
        session.answer(b, "0", "label", "circle")
    time.sleep(0.4)  # a's lease on image 0 runs out; a third tab takes it
    c = session.open_tab()
    assert session.next(c)["id"] == "0"  # type: ignore[index]
    with pytest.raises(Refused, match="another tab"):
        session.answer(a, "0", "label", "circle")
    session.answer(c, "0", "label", "square")
    with pytest.raises(Refused, match="unknown class"):
        session.answer(b, "1", "label", "dog")
    assert _rows(tmp_path / "l.csv") == [
        {"path": "pool/000_circle.png", "label": "square", "labelled_by": "person"}
    ]


def test_a_kill_mid_answer_leaves_a_whole_manifest(data: Path, tmp_path: Path) -> None:
    _pool(data, tmp_path / "pool", 400)
    out = tmp_path / "labels.csv"
    args = (str(data), str(tmp_path / "pool"), "--out", str(out), "-q")
    sent: set[tuple[str, str]] = set()
    acknowledged: set[tuple[str, str]] = set()
    with label_server(tmp_path / "server.log", *args) as (url, proc):
        client = httpx.Client(base_url=url, timeout=5)
        tab = client.post("/api/tab").json()["tab"]
        item = client.post("/api/next", json={"tab": tab}).json()["item"]
        killer = threading.Timer(1.5, lambda: os.kill(proc.pid, signal.SIGKILL))
        killer.start()
        try:
            for i in range(400):
                label = CLASSES[i % 3]
                sent.add((item["name"], label))
                body = {"tab": tab, "id": item["id"], "action": "label", "label": label}
                response = client.post("/api/answer", json=body)
                assert response.status_code == 200, response.text
                acknowledged.add((item["name"], label))
                item = response.json()["item"]
        except httpx.TransportError:
            pass
        killer.join()
        proc.wait()
    rows = _rows(out)
    assert all(list(row) == ["path", "label", "labelled_by"] for row in rows)
    assert all(row["labelled_by"] == "person" for row in rows)
    written = {(row["path"], row["label"]) for row in rows}
    assert len(written) == len(rows) and len(rows) >= 5  # no row twice; the loop ran a while
    assert acknowledged <= written <= sent


def test_a_failed_write_keeps_the_old_manifest_and_the_answer_unrecorded(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _pool(data, tmp_path / "pool", 3)
    out = tmp_path / "labels.csv"
    session = open_session(data, tmp_path / "pool", out=out)
    tab = session.open_tab()
    session.next(tab)
    session.answer(tab, "0", "label", "circle")
    before = out.read_bytes()
    session.next(tab)

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(imagewise.io.os, "replace", broken_replace)
    with pytest.raises(OSError):
        session.answer(tab, "1", "label", "square")
    assert out.read_bytes() == before
    assert list(session.answers) == ["0"]
    monkeypatch.undo()
    session.answer(tab, "1", "label", "square")  # the same answer goes through once it can
    assert [r["label"] for r in _rows(out)] == ["circle", "square"]


def test_a_restart_resumes_where_it_stopped(data: Path, tmp_path: Path) -> None:
    images = _pool(data, tmp_path / "pool", 5)
    out = tmp_path / "labels.csv"
    session = open_session(data, tmp_path / "pool", out=out)
    tab = session.open_tab()
    for action, label in (("label", "circle"), ("skip", None), ("none", None)):
        item = session.next(tab)
        session.answer(tab, item["id"], action, label)  # type: ignore[index]
    again = open_session(data, tmp_path / "pool", out=out)
    progress = again.progress()
    assert (progress["labelled"], progress["skipped"], progress["none"]) == (1, 1, 1)
    assert progress["left"] == 3
    tab = again.open_tab()
    order = []
    while (item := again.next(tab)) is not None:
        order.append(item["id"])
        again.answer(tab, item["id"], "label", "stripes")
    assert order == ["3", "4", "1"]  # fresh images first, then the skipped one
    assert [(r["path"], r["label"]) for r in _rows(out)] == [
        (f"pool/{images[k].name}", label)
        for k, label in ((0, "circle"), (3, "stripes"), (4, "stripes"), (1, "stripes"))
    ]
    from imagewise.data.sources import resolve_source

    readback = resolve_source(str(out), val_fraction=0.0, test_fraction=0.0)  # as train reads it
    assert len(readback.train) == 4 and readback.train.columns == {"labelled_by": ["person"] * 4}


def _manifest_data(root: Path) -> Path:
    """A CSV manifest of 9 images, in train, val and test by turns."""
    folder = make_folder_dataset(root / "img", 3, corrupt=False)
    lines = ["path,label,split"]
    for i, image in enumerate(sorted(folder.glob("*/*.*"))):
        split = ("train", "val", "test")[i % 3]
        lines.append(f"img/{image.parent.name}/{image.name},{image.parent.name},{split}")
    (root / "data.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / "data.csv"


def _likely_errors(
    manifest: Path, rows: list[dict[str, str]], picks: tuple[int, ...]
) -> list[dict[str, object]]:
    """data check's label_issues for the rows ``picks``, each suggested as stripes."""
    return [
        {"path": str(manifest.parent / rows[k]["path"]), "split": rows[k]["split"],
         "given": rows[k]["label"], "suggested": "stripes", "given_probability": 0.1,
         "suggested_probability": 0.8}
        for k in picks
    ]  # fmt: skip


def test_review_keeps_relabels_and_drops(tmp_path: Path) -> None:
    manifest = _manifest_data(tmp_path / "ds")
    # the dataset's rows as train reads them: the train split, then val, then test
    rows = sorted(_rows(manifest), key=lambda r: ("train", "val", "test").index(r["split"]))
    issues = _likely_errors(manifest, rows, (0, 2, 4))
    # the check was run from elsewhere: its paths start with the dataset's name as it was given
    issues[1]["path"] = f"elsewhere/{rows[2]['path']}"
    findings = tmp_path / "findings.json"
    report = {"source": "elsewhere/data.csv", "label_issues": issues}
    findings.write_text(json.dumps(report))
    out = tmp_path / "ds" / "reviewed.csv"
    session = open_session(manifest, review=findings, out=out)
    client = TestClient(create_label_app(session, out))
    assert client.get("/api/info").json()["mode"] == "review"
    tab = client.post("/api/tab").json()["tab"]
    item = client.post("/api/next", json={"tab": tab}).json()["item"]
    assert (item["given"], item["guess"], item["probability"]) == (rows[0]["label"], "stripes", 0.8)
    assert (
        item["reason"] == f"the label check doubts '{rows[0]['label']}' (it gives that label 0.1)"
    )
    for action, label in (("keep", None), ("relabel", "square"), ("drop", None)):
        body = {"tab": tab, "id": item["id"], "action": action, "label": label}
        item = client.post("/api/answer", json=body).json()["item"]
    assert item is None
    person = {0: "person", 2: "person"}
    expected = [
        {**row, "label": "square" if k == 2 else row["label"], "labelled_by": person.get(k, "")}
        for k, row in enumerate(rows)
        if k != 4
    ]
    assert _rows(out) == expected
    again = open_session(manifest, review=findings, out=out)  # resumed: nothing left to ask
    assert again.next(again.open_tab()) is None and _rows(out) == expected


def test_retrain_runs_in_the_background_and_its_progress_is_shown(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagewise.label.progress import progress_file

    _pool(data, tmp_path / "pool", 3)
    out = tmp_path / "labels.csv"
    session = open_session(data, tmp_path / "pool", out=out)
    tab = session.open_tab()
    session.answer(tab, session.next(tab)["id"], "label", "circle")  # type: ignore[index]
    assert TestClient(create_label_app(session, out)).post("/api/retrain").status_code == 409
    entries = [
        {"labelled": 100, "val_accuracy": 0.70, "run": "runs/a", "at": "2026-12-08T01:00"},
        {"labelled": 200, "val_accuracy": 0.76, "run": "runs/b", "at": "2026-12-08T02:00"},
    ]
    calls = []

    def retrain(run: str, labels: Path, *, out: str | None = None) -> dict:
        calls.append((run, labels))
        imagewise.io.atomic_write_json(progress_file(labels), entries)  # as label retrain does
        return entries[-1]

    monkeypatch.setattr(imagewise.label, "retrain", retrain, raising=False)
    client = TestClient(create_label_app(session, out, run="runs/old"))
    assert client.post("/api/retrain").status_code == 202
    for _ in range(50):
        progress = client.get("/api/progress").json()
        if not progress["retrain"]["running"] and progress["history"]:
            break
        time.sleep(0.05)
    assert calls == [("runs/old", out)]
    assert progress["history"] == entries and progress["retrain"]["error"] is None
    # the next 100 labels, on the log fit of the two retrains: 0.06 * log(300 / 200) / log(2)
    assert progress["gain"]["batch"] == 100
    assert progress["gain"]["val_accuracy"] == pytest.approx(0.06 * 0.5849625, rel=1e-4)


def test_guesses_come_from_the_run_for_a_folder(
    trained_run: Path, folder_data: Path, tmp_path: Path
) -> None:
    images = _pool(folder_data, tmp_path / "pool", 3)
    session = open_session(folder_data, tmp_path / "pool", run=trained_run, out=tmp_path / "l.csv")
    item = session.next(session.open_tab())
    assert item is not None and item["guess"] in CLASSES
    assert 0 < item["probability"] <= 1
    assert images[0].name in item["name"]


@pytest.mark.parametrize(
    ("dataset", "args", "message"),
    [
        ("shapes", ["--queue", "{tmp}/missing.csv"], "--queue '{tmp}/missing.csv' does not exist"),
        ("empty", ["{tmp}/pool"], "has no class folders"),
        ("shapes", [], "nothing to label"),
        ("shapes", ["{tmp}/pool", "--review", "{tmp}/f.json"], "give no queue or folder"),
        ("shapes", ["--review", "{tmp}/f.json"], "has no label_issues list"),
        ("shapes", ["--review", "{tmp}/f.json", "--run", "{tmp}"], "--review takes no --run"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    dataset: str,
    args: list[str],
    message: str,
) -> None:
    _pool(data, tmp_path / "pool", 1)
    (tmp_path / "empty").mkdir()
    (tmp_path / "f.json").write_text("{}")
    target = str(data) if dataset == "shapes" else str(tmp_path / "empty")
    filled = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, _, err = run_cli(["label", "serve", target, *filled, "--port", "0"], capsys)
    assert code == 2
    assert message.replace("{tmp}", str(tmp_path)) in err
    assert len(err.strip().splitlines()) == 1


def test_a_loopback_server_answers_only_its_own_host_names(data: Path, tmp_path: Path) -> None:
    _pool(data, tmp_path / "pool", 1)
    session = open_session(data, tmp_path / "pool", out=tmp_path / "l.csv")
    app = create_label_app(session, tmp_path / "l.csv", hosts=LOOPBACK_HOSTS)
    own = TestClient(app, base_url="http://127.0.0.1:8000")
    assert own.get("/api/info").status_code == 200
    assert own.get("/api/image/..%2F..%2Fetc%2Fpasswd").status_code == 404
    rebound = TestClient(app, base_url="http://attacker.example:8000")  # DNS rebinding
    assert rebound.get("/api/info").status_code == 400


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make test installs it)")
def test_page_reviews_by_keyboard(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    manifest = _manifest_data(tmp_path / "ds")
    rows = sorted(_rows(manifest), key=lambda r: ("train", "val", "test").index(r["split"]))
    issues = _likely_errors(manifest, rows, (0, 1, 3))
    findings = tmp_path / "findings.json"
    findings.write_text(json.dumps({"source": str(manifest), "label_issues": issues}))
    out = tmp_path / "ds" / "reviewed.csv"
    session = open_session(manifest, review=findings, out=out)
    errors: list[str] = []
    with page_server(session, out) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_selector("body[data-state=ready]")
        shown = (page.text_content("#guess"), page.text_content("#classes .given"))
        _press(page, "k")  # row 0: kept
        _press(page, "Enter")  # row 1: the suggestion, stripes
        _press(page, "d")  # row 3: dropped
        progress = page.text_content("#progress")
        browser.close()
    assert errors == []
    key = CLASSES.index(rows[0]["label"]) + 1  # the given class's button: its key, its name
    assert shown == (
        f"given: {rows[0]['label']}; suggested: stripes (80.0%)",
        f"{key}{rows[0]['label']}",
    )
    assert progress == "3 / 3 reviewed · 1 dropped"
    reviewed = {0: rows[0]["label"], 1: "stripes"}
    assert _rows(out) == [
        {
            **row,
            "label": reviewed.get(k, row["label"]),
            "labelled_by": "person" if k in reviewed else "",
        }
        for k, row in enumerate(rows)
        if k != 3
    ]
