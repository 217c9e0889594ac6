"""The adapters shipped with the app (assets/adapters, built by `python -m training ship-adapters`): read-only runs
that Compare offers before anyone trains, on the base model they were trained on only.

Each is checked before it is offered: the manifest's format, the base model's digest against the one the app
loaded (the embedded model may be replaced by another edition: then they are hidden, with a log line), and the
digest of every file. The weights are safetensors; each usable adapter is laid out as a run directory in the
app's scratch folder, so Compare loads it as it loads any run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from training.catalog import METHOD_LABELS
from training.paths import DEFAULT_MODEL_DIR
from training.run import runs
from training.run.config import TASKS
from training.study.shipped import FORMAT, MANIFEST
from training.sweeps.table import folder_sha

log = logging.getLogger("vlpeft.app.shipped")
ID_PREFIX = "shipped-"  # a shipped adapter's id in Compare and the API: never a job id (those start with a date)
EMBEDDED_NAMES = {"caption": "scene-caption", "vqa": "scene-VQA"}  # the embedded datasets, as the app names them


@dataclass
class ShippedAdapter:
    id: str  # 'shipped-vqa__lora__b18k__f1__s0'
    record: dict  # its JSON: method, task, budget, test score, provenance
    run_dir: Path  # laid out as a run directory (config.json, weights, eval.json) for Compare

    @property
    def task(self) -> str:
        return self.record["task"]

    @property
    def label(self) -> str:
        """'LoRA, 18k parameters, shipped with the app (trained on scene-VQA, 100 % data)'."""
        what = self.record.get("label") or METHOD_LABELS.get(self.record["method"], self.record["method"])
        dataset = self.record.get("dataset") or {}
        name = dataset.get("name")
        trained_on = EMBEDDED_NAMES.get(self.task, name) if name in (None, f"scene-{self.task}") else name
        share = f"{100 * float(self.record.get('data_fraction') or 1.0):g} %"
        return f"{what}, shipped with the app (trained on {trained_on}, {share} data)"


def load_shipped(folder: Path | None, base_model: str | None, scratch: Path) -> tuple[list[ShippedAdapter], list[str]]:
    """The usable shipped adapters in `folder` for the app's base model (None: the embedded one), laid out under
    `scratch`; and a sentence for each thing skipped (also logged). No folder or no manifest: none, silently."""
    if folder is None or not (folder / MANIFEST).is_file():
        return [], []
    skipped: list[str] = []

    def skip(message: str) -> None:
        log.warning("shipped adapters: %s", message)
        skipped.append(message)

    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        skip(
            f"{folder / MANIFEST} cannot be read ({exc}): none is offered; rebuild them with "
            "`python -m training ship-adapters`."
        )
        return [], skipped
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or not isinstance(manifest.get("adapters"), list)
    ):
        skip(f"{folder / MANIFEST} is not a manifest this app reads (format {FORMAT}): none is offered.")
        return [], skipped
    source = base_model or str(DEFAULT_MODEL_DIR)
    loaded_sha = folder_sha(source)
    trained_sha = (manifest.get("base_model") or {}).get("sha")
    if not trained_sha or trained_sha != loaded_sha:
        skip(
            f"they were trained on base model {trained_sha or '?'} and the app runs {Path(source).name} "
            f"({loaded_sha or 'not a local folder'}): they are hidden; rebuild them on this model with "
            "`python -m training ship-adapters`."
        )
        return [], skipped
    found = []
    for entry in manifest["adapters"]:
        try:
            found.append(_lay_out(folder, entry, trained_sha, base_model, scratch))
        except _Refused as exc:
            skip(str(exc))
    return found, skipped


class _Refused(Exception):
    pass


def _lay_out(folder: Path, entry: object, sha: str, base_model: str | None, scratch: Path) -> ShippedAdapter:
    """Check one manifest entry's files and lay it out as a run directory; _Refused says why it cannot be."""
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), dict):
        raise _Refused(f"an entry of {MANIFEST} is not an adapter's (no file digests): skipped.")
    name = str(entry.get("name", "?"))
    files = {key: entry.get(key) for key in ("info", "weights")}
    for file in files.values():
        if not isinstance(file, str) or Path(file).name != file or file.startswith("."):
            raise _Refused(f"{name}: the manifest names a file outside its folder ({file!r}): skipped.")
        path = folder / file
        if not path.is_file():
            raise _Refused(f"{name}: {file} is missing: skipped.")
        if hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"].get(file):
            raise _Refused(f"{name}: {file} is not the file the manifest lists (its digest differs): skipped.")
    if not files["weights"].endswith(".safetensors"):
        raise _Refused(f"{name}: the weights are not a .safetensors file: skipped.")
    try:
        record = json.loads((folder / files["info"]).read_text(encoding="utf-8"))
        run_info = dict(record["run"])
        config = dict(run_info["config"])
        task, method = record["task"], record["method"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _Refused(f"{name}: {files['info']} is not a shipped adapter's record ({exc}): skipped.") from None
    if task not in TASKS or method not in METHOD_LABELS or (task, method) != (entry.get("task"), entry.get("method")):
        raise _Refused(
            f"{name}: its record says {task} {method}, the manifest {entry.get('task')} {entry.get('method')}: skipped."
        )
    if (record.get("base_model") or {}).get("sha") != sha:
        raise _Refused(f"{name}: trained on another base model than the manifest says: skipped.")
    run_dir = scratch / "shipped" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    config.update(base_model=base_model, dataset=None)  # the app's own model: its digest was just checked
    runs.write_json(run_dir / runs.CONFIG, {**run_info, "config": config, "base_model": base_model})
    shutil.copyfile(folder / files["weights"], run_dir / runs.WEIGHTS)
    test = record.get("test") or {}
    runs.write_json(run_dir / runs.EVAL, {"metrics": test.get("metrics") or {}, "validation": record.get("validation")})
    return ShippedAdapter(ID_PREFIX + name, record, run_dir)
