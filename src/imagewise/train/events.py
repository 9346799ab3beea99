"""A run's scalars as a TensorBoard event file, written without TensorFlow.

``torch.utils.tensorboard.SummaryWriter`` resolves ``tensorboard.compat.tf`` as it is imported,
and that imports TensorFlow wherever it is installed: seconds of start-up and absl lines on
stderr in every run. Scalars need none of it: an event file is TensorBoard's records
(``RecordWriter``, with the CRC of TensorBoard's own stub) of ``Event`` protos, the ones
``SummaryWriter.add_scalar`` writes, and that is all this writes. Nothing in the process is
switched for it (the ``tensorboard.compat.notf`` stub module is not needed).
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path
from typing import Any

_FILE_NUMBERS = itertools.count()  # the last part of the file name, per process


class ScalarEvents:
    """``events.out.tfevents.*`` in ``logdir``: the version record, then one record a scalar.

    Raises ImportError when TensorBoard is not installed.
    """

    def __init__(self, logdir: Path) -> None:
        from tensorboard.compat.proto.event_pb2 import Event, SourceMetadata
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event, self._summary = Event, Summary
        logdir.mkdir(parents=True, exist_ok=True)
        # the name and first record TensorBoard's EventFileWriter gives a file
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{os.getpid()}.{next(_FILE_NUMBERS)}"
        )
        self._records = RecordWriter(open(logdir / name, "wb"))  # noqa: SIM115 (closed by close)
        writer = SourceMetadata(writer="tensorboard.summary.writer.event_file_writer")
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2",
                          source_metadata=writer))  # fmt: skip
        self.flush()

    def _write(self, event: Any) -> None:
        self._records.write(event.SerializeToString())

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        """One scalar at ``step``, as ``SummaryWriter.add_scalar`` records it (simple_value)."""
        value_proto = self._summary.Value(tag=tag, simple_value=float(value))
        summary = self._summary(value=[value_proto])
        self._write(self._event(wall_time=time.time(), step=int(step), summary=summary))

    def flush(self) -> None:
        self._records.flush()

    def close(self) -> None:
        if not self._records.closed:
            self._records.close()
