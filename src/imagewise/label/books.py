"""Where the labelling page keeps its answers: the output manifest and a state file beside it.

Label mode (``QueueBook``): the manifest holds one ``path,label,labelled_by`` row per labelled
image (``labelled_by``: ``person``), in the order they were answered, after the rows it held
before that are not in this queue; skipped and "none of these" images are in the state file
(``OUT.state.json``), never in the manifest. Review mode (``ReviewBook``): every answer is in
the state file, and the manifest is the whole dataset (``path,label,split,labelled_by``) with
the corrections applied and dropped images left out (``labelled_by``: ``person`` on the rows
reviewed here).

Both files are written whole and atomically (``imagewise.io``), and only when they change; a
restart on the same ``--out`` reads them back, so answered images are not asked again. The
retrains' progress entries are ``label retrain``'s, beside the manifest
(``OUT.progress.json``: ``imagewise.label.progress``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from imagewise.data.manifest import (
    PERSON,
    manifest_path,
    read_rows,
    resolve_manifest_path,
    write_manifest,
)
from imagewise.errors import UserError
from imagewise.io import atomic_write_json
from imagewise.label.progress import read_progress
from imagewise.label.session import LABELLED, Answer, Item
from imagewise.names import TEXT_ERRORS

STATE_VERSION = 1


def state_path(out: str | Path) -> Path:
    """The state file beside a manifest: ``labels.csv`` -> ``labels.csv.state.json``."""
    out = Path(out)
    return out.with_name(out.name + ".state.json")


def read_state(path: Path) -> dict[str, Any]:
    """The state file's content ({} when there is none yet)."""
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8", errors=TEXT_ERRORS))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the labelling state '{path}': {exc}") from exc
    if not isinstance(state, dict):
        raise UserError(f"'{path}' is not a labelling state file; move it away")
    return state


class _StateFile:
    """The state file: answers by manifest path."""

    def __init__(self, out: Path, mode: str) -> None:
        self.path = state_path(out)
        self.mode = mode
        state = read_state(self.path)
        if state.get("mode", mode) != mode:
            raise UserError(
                f"'{self.path}' holds the state of a {state['mode']} session; use another --out"
            )
        self.answers: dict[str, dict[str, Any]] = state.get("answers", {})
        self.written = dict(self.answers)

    def write(self, answers: dict[str, dict[str, Any]]) -> None:
        if answers == self.written:
            return
        state = {"version": STATE_VERSION, "mode": self.mode, "answers": answers}
        atomic_write_json(self.path, state)
        self.written = dict(answers)


def _as_dict(answer: Answer) -> dict[str, Any]:
    return {"action": answer.action, **({"label": answer.label} if answer.label else {})}


def _read_rows(out: Path) -> list[dict[str, str]]:
    """The rows of an existing manifest at ``out`` ([] when there is none)."""
    if not out.exists():
        return []
    rows, header = read_rows(out, f"the labels in --out '{out}'")
    if not {"path", "label"} <= set(header):
        raise UserError(
            f"--out '{out}' is not a labels manifest (no path,label header); name a new file"
        )
    return rows


class QueueBook:
    """Label mode: labels in the manifest at ``out``, skipped and "none" in the state file."""

    mode = "label"
    EXTRA = ("split", "probability")  # columns an earlier manifest may hold, kept

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.state = _StateFile(self.out, self.mode)
        self.others: list[dict[str, str]] = []  # earlier rows of images not in this queue
        self.rows: dict[tuple[str, str], dict[str, str]] = {}  # (item id, label) -> its row
        self.keys: dict[str, str] = {}  # item id -> its manifest path
        self.columns = ["path", "label", "labelled_by"]
        self.written: list[tuple[str, str]] | None = None  # the labels the manifest holds

    def load(self, items: list[Item]) -> dict[str, Answer]:
        self.keys = {item.id: item.key for item in items}
        by_key = {item.key: item for item in items}
        answers: dict[str, Answer] = {}
        rows = _read_rows(self.out)
        for row in rows:
            path = row.get("path") or ""
            item = by_key.get(manifest_path(resolve_manifest_path(path, self.out), self.out))
            if item is None or item.id in answers or not row.get("label"):
                self.others.append(row)
                continue
            answers[item.id] = Answer("label", row["label"])
            self.rows[item.id, row["label"]] = row  # as it was (who labelled it, ...)
        for key, given in self.state.answers.items():
            item = by_key.get(key)
            action = given.get("action")
            if item is not None and item.id not in answers and action in ("skip", "none"):
                answers[item.id] = Answer(action)
        extra = [c for c in self.EXTRA if any(r.get(c) for r in rows)]
        self.columns = ["path", "label", *extra[:1], "labelled_by", *extra[1:]]
        self.written = self._labels(answers) if self.out.exists() else None
        return answers

    @staticmethod
    def _labels(answers: dict[str, Answer]) -> list[tuple[str, str]]:
        return [(i, str(a.label)) for i, a in answers.items() if a.action == "label"]

    def write(self, items: list[Item], answers: dict[str, Answer]) -> None:
        labels = self._labels(answers)
        if labels != self.written:
            rows = [*self.others, *(self._row(item_id, label) for item_id, label in labels)]
            write_manifest(self.out, rows, columns=self.columns)
            self.written = labels
        skipped = {
            self.keys[i]: _as_dict(a) for i, a in answers.items() if a.action in ("skip", "none")
        }
        self.state.write(skipped)

    def _row(self, item_id: str, label: str) -> dict[str, str]:
        row = self.rows.get((item_id, label))
        if row is None:
            row = {"path": self.keys[item_id], "label": label, "labelled_by": PERSON}
            self.rows[item_id, label] = row
        return row

    def history(self) -> list[dict[str, Any]]:
        return read_progress(self.out)


class ReviewBook:
    """Review mode: every answer in the state file; the manifest is the whole dataset
    (``rows``: absolute path, label, split) corrected."""

    mode = "review"
    COLUMNS = ("path", "label", "split", "labelled_by")

    def __init__(self, out: str | Path, rows: list[tuple[str, str, str]]) -> None:
        self.out = Path(out)
        self.state = _StateFile(self.out, self.mode)
        self.rows = rows
        self.written: list[dict[str, str]] | None = None

    def load(self, items: list[Item]) -> dict[str, Answer]:
        answers: dict[str, Answer] = {}
        for item in items:
            given = self.state.answers.get(item.key)
            if given is not None and given.get("action") in ("keep", "relabel", "drop", "skip"):
                answers[item.id] = Answer(given["action"], given.get("label"))
        self._write_manifest(items, answers)  # the output reflects the state from the start
        return answers

    def write(self, items: list[Item], answers: dict[str, Answer]) -> None:
        by_id = {item.id: item for item in items}
        # the state first: a kill between the two leaves an answer the next start writes out
        self.state.write({by_id[i].key: _as_dict(a) for i, a in answers.items()})
        self._write_manifest(items, answers)

    def _write_manifest(self, items: list[Item], answers: dict[str, Answer]) -> None:
        by_key = {item.key: answers[item.id] for item in items if item.id in answers}
        out_rows = []
        for path, label, split in self.rows:
            key = manifest_path(path, self.out)
            answer = by_key.get(key)
            if answer is not None and answer.action == "drop":
                continue
            if answer is not None and answer.action == "relabel":
                label = str(answer.label)
            reviewed = answer is not None and answer.action in LABELLED
            out_rows.append(
                {"path": key, "label": label, "split": split,
                 "labelled_by": PERSON if reviewed else ""}
            )  # fmt: skip
        if out_rows != self.written:
            write_manifest(self.out, out_rows, columns=self.COLUMNS)
            self.written = out_rows

    def history(self) -> list[dict[str, Any]]:
        return read_progress(self.out)
