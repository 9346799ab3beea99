"""The run folder: where one model's config, weights, metadata, history and reports live.

runs/NAME/
  config.yaml  meta.json  model.safetensors  last.ckpt  history.csv  curves.png
  tensorboard/  eval/metrics.json  eval/confusion_matrix.png  eval/confusion_matrix.csv
  MODEL_CARD.md  model_card.html  model_card.yaml  (imagewise card)
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagewise.errors import UserError
from imagewise.io import atomic_write_json, atomic_write_text, read_json
from imagewise.runtime.meta import RunMeta, validate


def free_run_path(base: str | Path) -> Path:
    """``base``, or ``base-2``, ``base-3``... : the first that does not exist yet."""
    base = Path(base)
    if not base.exists():
        return base
    n = 2
    while Path(f"{base}-{n}").exists():
        n += 1
    return Path(f"{base}-{n}")


@dataclass(frozen=True)
class RunFolder:
    """Paths of a run folder; nothing is created until something is written."""

    path: Path

    @classmethod
    def of(cls, path: str | Path) -> RunFolder:
        return cls(Path(path).expanduser())

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def meta(self) -> Path:
        return self.path / "meta.json"

    @property
    def weights(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def last(self) -> Path:
        return self.path / "last.ckpt"

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    @property
    def curves(self) -> Path:
        return self.path / "curves.png"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def model_card(self) -> Path:
        """MODEL_CARD.md (``imagewise card``), which exports carry in their metadata."""
        return self.path / "MODEL_CARD.md"

    def holds_run(self) -> bool:
        return self.meta.exists() or self.last.exists() or self.weights.exists()

    def read_meta(self) -> RunMeta:
        """The run's metadata, brought up to date and checked (``RunMeta.from_json``); a clear
        error when the folder is not a finished run or its metadata is wrong."""
        if not self.path.exists():
            raise UserError(f"run folder '{self.path}' does not exist; check the path")
        if not self.meta.is_file() or not self.weights.is_file():
            raise UserError(
                f"'{self.path}' is not an imagewise run folder (no meta.json and "
                "model.safetensors); train one with 'imagewise train DATA --out DIR'"
            )
        return self.read_meta_file()

    def read_meta_file(self) -> RunMeta:
        """``meta.json`` alone (no weights needed: a run still training, or a classical one)."""
        try:
            values = read_json(self.meta)
        except ValueError as exc:
            raise UserError(f"meta.json of '{self.path}' is not valid JSON: {exc}") from exc
        return RunMeta.from_json(
            values, source=f"meta.json of '{self.path}'", config_reader=self._config_tta
        )

    def _config_tta(self) -> Any:
        """``train.tta`` from config.yaml, for runs whose meta.json predates its ``tta``."""
        if not self.config.is_file():
            return False
        from imagewise.config import load_config_file

        return load_config_file(self.config).train.tta

    def write_meta(self, meta: RunMeta) -> None:
        validate(meta, f"meta.json of '{self.path}'")
        atomic_write_json(self.meta, meta.to_json())

    def write_history(self, rows: list[dict[str, float]]) -> None:
        if not rows:
            return
        buf = io.StringIO()
        # every column any row has, in order: a resumed older run gains new columns
        fields = list(dict.fromkeys(key for row in rows for key in row))
        writer = csv.DictWriter(buf, fieldnames=fields, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )
        atomic_write_text(self.history, buf.getvalue())

    def read_history(self) -> list[dict[str, float]]:
        if not self.history.is_file():
            return []
        with open(self.history, newline="") as f:
            return [
                {k: float(v) for k, v in row.items() if v not in ("", None)}
                for row in csv.DictReader(f)
            ]
