"""The labelling page's state: the images to ask about, who is looking at which, the answers.

``LabelSession`` hands each image to one browser tab at a time (a lease of ``LEASE_S``
seconds, renewed while the tab shows it and released when it answers or skips), so two tabs on
one queue never get the same image. Every answer goes through its ``Book`` (``label.books``),
which writes it at once, atomically; an answer whose write fails is not recorded. One lock
guards every change, so the server's threads see one order of events.

Answers: ``label`` (a class), ``skip`` (later: skipped images come back after the others),
``none`` ("none of these": not asked again); in review mode ``keep``, ``relabel`` (a class)
and ``drop``. Each tab can undo its own answers, latest first.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from imagewise.names import shown

LEASE_S = 300.0  # how long a tab holds an image it has not answered
MAX_TABS = 256  # past it, the tab idle longest is forgotten (its image released)
LABEL_ACTIONS = ("label", "skip", "none")
REVIEW_ACTIONS = ("keep", "relabel", "drop", "skip")
LABELLED = ("label", "keep", "relabel")  # answers that give the image a label
RESERVED_KEYS = "dknsz"  # D drop, K keep, N none of these, S skip, Z (Ctrl+Z) undo


def class_keys(classes: list[str]) -> list[str | None]:
    """Each class's key on the page: 1 to 9, then the letters no action uses; None past them.

    >>> class_keys(["cat", "dog"])
    ['1', '2']
    """
    keys = [str(d) for d in range(1, 10)]
    keys += [c for c in "abcdefghijklmnopqrstuvwxyz" if c not in RESERVED_KEYS]
    return [keys[i] if i < len(keys) else None for i in range(len(classes))]


class Refused(Exception):
    """A request the session cannot take, with the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Item:
    """One image to ask about; ``id`` is the server's name for it (the only one clients use)."""

    id: str
    path: str  # the image file, absolute
    key: str  # how the output manifest names it (data.manifest.manifest_path)
    guess: str | None = None  # label mode: the model's guess; review: the audit's suggestion
    probability: float | None = None
    given: str | None = None  # review: the dataset's label
    split: str | None = None  # review: the image's split
    reason: str = ""


@dataclass
class Answer:
    """What a person answered about an item (``label``: the class, for label and relabel)."""

    action: str
    label: str | None = None


class Book(Protocol):
    """Where answers are kept: loads the earlier ones and writes each change atomically."""

    mode: str  # "label" or "review"
    out: Path  # the manifest

    def load(self, items: list[Item]) -> dict[str, Answer]:
        """The answers given before (item id -> answer), in the order they were given."""
        ...

    def write(self, items: list[Item], answers: dict[str, Answer]) -> None:
        """Write ``answers`` (all of them, in order); raises and changes nothing on failure."""
        ...

    def history(self) -> list[dict[str, Any]]:
        """The retrains' progress entries recorded for the manifest, oldest first."""
        ...


@dataclass
class Tab:
    """One browser tab: the image it holds and the answers it may undo."""

    id: str
    seen: float
    current: str | None = None
    undo: list[tuple[str, Answer]] = field(default_factory=list)  # its answers, in order


class LabelSession:
    """The images, the tabs' leases and the answers, behind one lock.

    Args:
        book: where answers are read from and written to (``label.books``).
        classes: the class names a label may take.
        items: the images to ask about, in order.
        lease_s: seconds a tab holds an image it has not answered.
        guesser: fills an item's ``guess`` and ``probability`` the first time it is handed
            out (a run's classifier), or None.
    """

    def __init__(
        self,
        book: Book,
        classes: list[str],
        items: list[Item],
        lease_s: float = LEASE_S,
        guesser: Callable[[Item], None] | None = None,
    ) -> None:
        self.book = book
        self.classes = list(classes)
        self.items = items
        self.by_id = {item.id: item for item in items}
        self.lease_s = lease_s
        self.guesser = guesser
        self.lock = threading.Lock()
        self.guess_lock = threading.Lock()
        self.tabs: dict[str, Tab] = {}
        self.leases: dict[str, tuple[str, float]] = {}  # item id -> (tab id, expiry)
        self.answers = book.load(items)
        self.position = {item.id: i for i, item in enumerate(items)}
        self.cursor = 0  # no image before it is waiting for a first answer

    @property
    def actions(self) -> tuple[str, ...]:
        return REVIEW_ACTIONS if self.book.mode == "review" else LABEL_ACTIONS

    def open_tab(self) -> str:
        """A new tab's id (a secret: a tab cannot act for another)."""
        with self.lock:
            if len(self.tabs) >= MAX_TABS:
                oldest = min(self.tabs.values(), key=lambda t: t.seen)
                self._release(oldest)
                del self.tabs[oldest.id]
            tab = Tab(secrets.token_urlsafe(16), time.monotonic())
            self.tabs[tab.id] = tab
            return tab.id

    def next(self, tab_id: str) -> dict[str, Any] | None:
        """The image this tab shows now: the one it holds, else the next free one (leased to
        it); None when nothing is left to ask."""
        with self.lock:
            item = self._hand_out(self._tab(tab_id))
        return self._shown(item)

    def answer(self, tab_id: str, item_id: str, action: str, label: str | None = None) -> None:
        """Record this tab's answer about the image it holds, written at once."""
        answer = self._checked(action, label)
        with self.lock:
            tab = self._tab(tab_id)
            item = self._held(tab, item_id)
            self._change(item.id, answer)
            self._release(tab)
            tab.undo.append((item.id, answer))

    def undo(self, tab_id: str) -> dict[str, Any] | None:
        """Take back this tab's latest answer; the image comes back to it (None: no answer
        of this tab's to take back)."""
        with self.lock:
            tab = self._tab(tab_id)
            # an image this tab skipped may have been answered in another tab since: not ours
            while tab.undo and self.answers.get(tab.undo[-1][0]) is not tab.undo[-1][1]:
                tab.undo.pop()
            if not tab.undo:
                return None
            item_id = tab.undo[-1][0]
            holder = self._holder(item_id)
            if holder is not None and holder != tab.id:
                raise Refused(409, "that image is open in another tab now; answer it there")
            self._change(item_id, None)
            tab.undo.pop()
            self._release(tab)
            self._lease(tab, item_id)
        return self._shown(self.by_id[item_id])

    def release(self, tab_id: str) -> None:
        """The tab is closing: its image goes back to the others."""
        with self.lock:
            tab = self.tabs.pop(tab_id, None)
            if tab is not None:
                self._release(tab)

    def progress(self) -> dict[str, Any]:
        """Counts for the page: labelled so far of the queue, skipped, none, dropped, left,
        and the retrains' progress entries."""
        with self.lock:
            counts = {"labelled": 0, "skipped": 0, "none": 0, "dropped": 0}
            for answer in self.answers.values():
                if answer.action in LABELLED:
                    counts["labelled"] += 1
                elif answer.action == "drop":
                    counts["dropped"] += 1
                elif answer.action in ("skip", "none"):
                    counts["skipped" if answer.action == "skip" else "none"] += 1
            finished = sum(a.action != "skip" for a in self.answers.values())
            return {"total": len(self.items), **counts, "left": len(self.items) - finished}

    def _checked(self, action: str, label: str | None) -> Answer:
        if action not in self.actions:
            raise Refused(422, f"unknown answer '{action}'; one of {', '.join(self.actions)}")
        needs_label = action in ("label", "relabel")
        if needs_label and label not in self.classes:
            raise Refused(422, f"unknown class '{label}'; one of {', '.join(self.classes)}")
        return Answer(action, label if needs_label else None)

    def _tab(self, tab_id: str) -> Tab:
        tab = self.tabs.get(tab_id)
        if tab is None:
            raise Refused(404, "this page's session has ended; reload the page")
        tab.seen = time.monotonic()
        return tab

    def _holder(self, item_id: str) -> str | None:
        lease = self.leases.get(item_id)
        if lease is None or lease[1] < time.monotonic():
            return None
        return lease[0]

    def _held(self, tab: Tab, item_id: str) -> Item:
        """The item this tab may answer: the one it holds, or a free one it held before."""
        item = self.by_id.get(item_id)
        if item is None:
            raise Refused(404, f"no image '{item_id}' in this queue")
        holder = self._holder(item_id)
        if holder is not None and holder != tab.id:
            raise Refused(409, "this image was handed to another tab; take the next one")
        if holder is None and tab.current != item_id:
            raise Refused(409, "this image is not yours to answer; take the next one")
        answer = self.answers.get(item_id)
        if answer is not None and answer.action != "skip":
            raise Refused(409, "this image was answered already; take the next one")
        return item

    def _hand_out(self, tab: Tab) -> Item | None:
        if tab.current is not None and self._holder(tab.current) == tab.id:
            self._lease(tab, tab.current)  # renewed: the tab is still looking at it
            return self.by_id[tab.current]
        self._release(tab)
        for item_id in self._asking_order():
            if self._holder(item_id) is None:
                self._lease(tab, item_id)
                return self.by_id[item_id]
        return None

    def _asking_order(self) -> Iterator[str]:
        """Images never answered, in queue order; then the skipped ones, oldest skip first."""
        while self.cursor < len(self.items) and self.items[self.cursor].id in self.answers:
            self.cursor += 1
        for item in itertools.islice(self.items, self.cursor, None):
            if item.id not in self.answers:
                yield item.id
        yield from [i for i, a in self.answers.items() if a.action == "skip"]

    def _lease(self, tab: Tab, item_id: str) -> None:
        self.leases[item_id] = (tab.id, time.monotonic() + self.lease_s)
        tab.current = item_id

    def _release(self, tab: Tab) -> None:
        if tab.current is not None and self._holder(tab.current) == tab.id:
            del self.leases[tab.current]
        tab.current = None

    def _change(self, item_id: str, answer: Answer | None) -> None:
        """Set (None: remove) an item's answer and write; on a failed write nothing changes.
        A new answer goes last, as the order answers were given is the manifest's order."""
        before = dict(self.answers)
        self.answers.pop(item_id, None)
        self.cursor = min(self.cursor, self.position[item_id])
        if answer is not None:
            self.answers[item_id] = answer
        try:
            self.book.write(self.items, self.answers)
        except BaseException:
            self.answers = before
            raise

    def _shown(self, item: Item | None) -> dict[str, Any] | None:
        """What the page shows of an item (its guess computed first when needed)."""
        if item is None:
            return None
        if item.guess is None and self.guesser is not None:
            with self.guess_lock:  # one model call at a time
                if item.guess is None:
                    self.guesser(item)
        with self.lock:
            answer = self.answers.get(item.id)
        return {
            "id": item.id,
            "name": shown(item.key),
            "guess": item.guess or None,
            "probability": item.probability,
            "given": item.given,
            "split": item.split,
            "reason": item.reason,
            "skipped": answer is not None and answer.action == "skip",
        }
