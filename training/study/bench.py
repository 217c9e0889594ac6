"""`python -m training bench [--json]`: speed and memory on the embedded default (or `--base-model`), in one run.

- training throughput (samples/s), step time and peak memory per method at default settings, each measured
  in a fresh process (so peak memory is that method's alone), with towers=both and towers=text. The step
  time is the median of the timed steps; the speed-up over full fine-tuning is measured in the same
  process, the two runs taking steps in turn (see measure_training). Prompt tuning is also timed at
  smaller budgets (shorter prompts), since its cost grows with the prompt length;
- compare latency for 1, 3 and 6 columns (the zero-shot base and 0, 2 or 5 adapters) on one image, for
  captioning and VQA, with adapters trained on both towers (the default) and on the text decoder only; the
  target is 6 columns within `COMPARE_TARGET_S` on the embedded default on a 2-core CPU;
- evaluation time as a share of a default run's wall time;
- the app's cold start to its first served page;
- each speed path against the plain path it stands in for (`paths`, see measure_speed_paths);
- real grid points trained end to end in fresh processes, with their wall time in parts, and optionally the same
  points with an older commit's code, or in a resident worker, in turns (`runs`, see training/study/replay.py; not
  in the default parts).
On CUDA the steps run under the trainer's autocast (bf16, fp16 where bf16 is missing), each is timed between
two synchronizations, and peak memory is CUDA's peak allocation; on the CPU it is the process's peak RSS.
`--parts` picks what to measure (a GPU check measures training and Compare on a BLIP-base-size model).
Figures are measured, never asserted: the tests check correctness, this prints the numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch

from training.catalog import PEFT_METHODS
from training.compare import Comparer
from training.data.dataset import load_dataset
from training.methods import vlmodel
from training.model.blip_internals import DynamicLayer
from training.model.pixels import PixelCache
from training.paths import REPO_ROOT
from training.run import runs
from training.run.config import RunConfig
from training.run.evaluation import predict
from training.run.tasks import Encoder, prompt_text, training_pairs
from training.run.trainer import (
    RUN_ADAPTER,
    autocast_dtype,
    batch_loss,
    build_model,
    precompute_features,
    prepare,
    resolve_device,
    train,
)
from training.study.replay import REPLAY_POINTS, measure_runs, print_runs

BENCH_METHODS = ("full", *PEFT_METHODS)
COMPARE_METHODS = PEFT_METHODS
# Prompt tuning's cost grows with its prompt length: also timed at these smaller budgets than the default.
PROMPT_BUDGETS = ("1k", "4k")
PARTS = ("train", "compare", "eval", "app", "paths", "runs")
COMPARE_TARGET_S = 1.0  # six columns on the embedded default, answered one after another


@dataclass(frozen=True)
class Setting:
    """What every measurement runs on: the base model and dataset (None: the embedded ones), task and device."""

    base_model: str | None = None
    task: str = "caption"
    device: str = "auto"
    dataset: str | None = None


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Steps:
    """A default run's model and optimizer, ready to take timed optimizer steps."""

    def __init__(
        self,
        method: str,
        towers: str,
        steps: int,
        batch_size: int,
        budget: str | None = None,
        setting: Setting = Setting(),
    ) -> None:
        chosen = {"budget": budget} if budget else {}
        config = RunConfig(
            task=setting.task,
            method=method,
            towers=towers,
            batch_size=batch_size,
            base_model=setting.base_model,
            dataset=setting.dataset,
            device=setting.device,
            **chosen,
        )
        self.budget = config.budget
        prepared = prepare(config)
        self.device = prepared.device
        self.dtype = autocast_dtype(self.device)
        self.vl, self.trainable = build_model(prepared)
        self.encoder = Encoder(self.vl.tokenizer, self.vl.bos_id, self.vl.sep_id, self.vl.pad_id, self.vl.max_positions)
        self.pixels = PixelCache(prepared.base.processor)
        self.pairs = training_pairs(setting.task, prepared.train_examples)
        self.batch_size = batch_size
        self.optimizer = torch.optim.AdamW(list(self.vl.adapters[RUN_ADAPTER].parameters()), lr=1e-4)
        started = time.perf_counter()
        self.features = {}
        if config.cache_features and not self.vl.adapters[RUN_ADAPTER].touches_vision():
            self.features = precompute_features(self.vl, prepared.train_examples, self.pixels)
        self.cache_s = time.perf_counter() - started
        self.pixels([p[0] for p in self.pairs[: batch_size * (steps + 3)]])  # decoded outside the timing
        self.vl.model.train()

    def step(self, index: int) -> float:
        start_row = index * self.batch_size % max(1, len(self.pairs) - self.batch_size)
        batch = self.pairs[start_row : start_row + self.batch_size]
        _sync(self.device)
        start = time.perf_counter()
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            loss = batch_loss(self.vl, batch, self.encoder, self.pixels, self.features)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        _sync(self.device)
        return time.perf_counter() - start

    def peak_memory_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _median(times: list[float]) -> float:
    return sorted(times)[len(times) // 2]


def measure_training(
    method: str, towers: str, steps: int, batch_size: int, budget: str | None = None, setting: Setting = Setting()
) -> dict:
    """Time `steps` optimizer steps of a default run in this process, after warm-up steps.

    Peak memory is read before anything else is built, so it is this method's alone. Then (for a PEFT
    method) a full fine-tuning run is built beside it and the two take steps in turn, each timed: the
    ratio of their median steps is measured under the same machine conditions. On this shared 2-core
    machine one configuration's median step varied by up to 15 % from one process to the next, so ratios
    of steps timed in separate processes could cross a target by chance."""
    own = _Steps(method, towers, steps, batch_size, budget, setting)
    own.step(0)
    own.step(1)
    peak_mb = own.peak_memory_mb()
    full = _Steps("full", "both", steps, batch_size, setting=setting) if method != "full" else None
    if full:
        full.step(0)
    times, full_times = [], []
    for index in range(2, steps + 2):
        if full and index % 2:  # alternate which goes first
            full_times.append(full.step(index))
        times.append(own.step(index))
        if full and not index % 2:
            full_times.append(full.step(index))
    step_s = _median(times)
    full_s = _median(full_times) if full else step_s
    return {
        "method": method,
        "towers": towers,
        "budget": own.budget,
        "trainable_params": own.trainable,
        "batch_size": batch_size,
        "step_s": round(step_s, 4),
        "step_mean_s": round(sum(times) / len(times), 4),
        "samples_per_s": round(batch_size / step_s, 1),
        "full_step_s": round(full_s, 4),
        "speedup_vs_full": round(full_s / step_s, 2),
        "feature_cache_s": round(own.cache_s, 2) if own.features else None,
        "peak_mem_mb": round(peak_mb, 1),
        "device": str(own.device),
        "precision": str(own.dtype or "float32").replace("torch.", ""),
    }


def _alternating(fast, plain, repeats: int) -> dict:
    """Median seconds of `fast()` and `plain()`, called in turn (which goes first alternates), after one of each
    as warm-up; `saving` is the share of the plain path's time the fast one saves."""
    fast(), plain()
    fast_times, plain_times = [], []
    for index in range(repeats):
        for call, times in ((fast, fast_times), (plain, plain_times))[:: 1 if index % 2 else -1]:
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    fast_s, plain_s = _median(fast_times), _median(plain_times)
    return {"fast_s": round(fast_s, 4), "plain_s": round(plain_s, 4), "saving": round(1 - fast_s / plain_s, 3)}


def measure_speed_paths(repeats: int = 10, batch_size: int = 32, setting: Setting = Setting()) -> list[dict]:
    """Each speed path against the plain path it stands in for, on a default run (towers both, default
    budget), the two taking turns in one process: prompt tuning's last-layer truncation (a training step;
    plain: every position through the last layer), and `ReservedLayer` (greedy decoding of one evaluation
    batch with the run's default max_new_tokens, for LoRA, the default method, and prompt tuning, whose cache
    is longest; plain: transformers' concatenating cache layer). The style guide keeps a speed path only
    where it saves about 10 % or more. (LoRA's hand-written backward, `LowRankUpdate`, measured 7 % of a
    default LoRA step here on 2026-12-01 and was removed.)"""

    def plain_layer(keys, values, room):
        layer = DynamicLayer()
        layer.update(keys, values)
        return layer

    rows = []
    counter = iter(range(10**6))
    prompt_run = _Steps("prompt", "both", repeats, batch_size, setting=setting)

    def prompt_plain_step():
        with mock.patch.object(prompt_run.vl, "_unread", lambda positions: contextlib.nullcontext()):
            prompt_run.step(next(counter))

    rows.append(
        {
            "path": "last-layer truncation",
            "measured": "prompt training step",
            **_alternating(lambda: prompt_run.step(next(counter)), prompt_plain_step, repeats),
        }
    )
    max_new = RunConfig().max_new_tokens
    lora_run = _Steps("lora", "both", repeats, batch_size, setting=setting)
    for name, steps in (("lora", lora_run), ("prompt", prompt_run)):
        examples = [pair[0] for pair in steps.pairs[:batch_size]]
        vl = steps.vl
        vl.model.eval()
        with torch.no_grad():
            embeds = vl.encode_images(steps.pixels(examples))
        prompts = [steps.encoder.prompt_ids(prompt_text(setting.task, e.question)) for e in examples]

        def decode(vl=vl, embeds=embeds, prompts=prompts):
            return vl.generate(embeds, prompts, max_new)

        def plain_decode(decode=decode):
            with mock.patch.object(vlmodel, "ReservedLayer", plain_layer):
                return decode()

        rows.append(
            {
                "path": "ReservedLayer",
                "measured": f"{name} greedy decoding of {batch_size} images",
                **_alternating(decode, plain_decode, repeats),
            }
        )
    return rows


def measure_validation_paths(repeats: int = 3, setting: Setting = Setting(), budget: str | None = None) -> list[dict]:
    """The two speed paths of validation with a frozen vision tower, on a run's validation subset (LoRA on the text
    decoder, the grid's setting; untrained, so it decodes as the base model does), each against its plain path, in
    turns: image features computed once per run (plain: the vision tower at every validation), and decoding every
    example at once (`decode_rows`; plain: 64 at a time, as before)."""
    config = RunConfig(task=setting.task)
    steps = _Steps("lora", "text", 1, 32, budget, setting)
    examples = load_dataset(setting.dataset, setting.task).split("validation")
    examples = examples[: config.resolved_val_limit() or len(examples)]
    vl = steps.vl
    vl.model.eval()
    with torch.no_grad():
        features = precompute_features(vl, examples, steps.pixels)

    def decode(features=None, batch_size=None):
        return predict(
            vl, setting.task, examples, steps.pixels, steps.encoder, batch_size, config.max_new_tokens, None, features
        )

    measured = f"{setting.task} validation of {len(examples)} examples"
    return [
        {
            "path": "validation features",
            "measured": measured,
            **_alternating(lambda: decode(features), lambda: decode(), repeats),
        },
        {
            "path": "wide decoding",
            "measured": measured,
            **_alternating(lambda: decode(features), lambda: decode(features, 64), repeats),
        },
    ]


def _in_subprocess(
    method: str, towers: str, steps: int, batch_size: int, budget: str | None = None, setting: Setting = Setting()
) -> dict:
    call = f"measure_training({method!r}, {towers!r}, {steps}, {batch_size}, {budget!r}, {setting!r})"
    code = f"import json; from training.study.bench import Setting, measure_training; print(json.dumps({call}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_compare(work: Path, task: str, towers: str, repeats: int = 9, setting: Setting = Setting()) -> dict:
    """Latency of Comparer.compare on one test image with the zero-shot base plus 0, 2 and 5 adapters
    (20-step runs of every method), trained on `towers` (both: the default, each adapter needs its own
    vision pass; text: they share the base's). The counts take turns within each repeat; the fastest and the
    median of `repeats` are kept. The outputs are recorded: each column decodes until its output ends, so a
    column set that answers in one word is timed on far fewer steps than one that writes whole captions."""
    run_dirs = []
    for method in COMPARE_METHODS:
        run_dir = work / f"compare-{task}-{towers}-{method}"
        if not (run_dir / "eval.json").exists():
            config = RunConfig(
                task=task,
                method=method,
                towers=towers,
                max_steps=20,
                eval_limit=10,
                base_model=setting.base_model,
                dataset=setting.dataset,
                device=setting.device,
            )
            train(config, run_dir, install_signals=False)
        run_dirs.append(run_dir)
    example = load_dataset(setting.dataset, task).split("test")[0]
    image = example.image.load()
    comparer = Comparer(setting.base_model, device=str(resolve_device(setting.device)))
    columns = comparer.compare(image, task, run_dirs, question=example.question)  # loads every adapter once
    timings: dict[int, list[float]] = {count: [] for count in (1, 3, 6)}
    for _ in range(repeats):
        for count, times in timings.items():
            start = time.perf_counter()
            comparer.compare(image, task, run_dirs[: count - 1], question=example.question)
            times.append(time.perf_counter() - start)
    rows = [
        {
            "task": task,
            "towers": towers,
            "adapters": count,
            "latency_s": round(min(times), 4),
            "latency_median_s": round(_median(times), 4),
        }
        for count, times in timings.items()
    ]
    return {
        "task": task,
        "towers": towers,
        "rows": rows,
        "six_within_target": min(timings[6]) <= COMPARE_TARGET_S,
        "outputs": {column.method: column.output for column in columns},
    }


def measure_eval_share(work: Path, setting: Setting = Setting()) -> dict:
    run_dir = work / f"default-{setting.task}-lora"
    if not (run_dir / "eval.json").exists():
        config = RunConfig(
            task=setting.task,
            method="lora",
            base_model=setting.base_model,
            dataset=setting.dataset,
            device=setting.device,
        )
        train(config, run_dir, install_signals=False)
    evaluation = runs.read_json(run_dir / "eval.json")
    eval_s, wall_s = evaluation["metrics"]["eval_s"], evaluation["wall_s"]
    return {"eval_s": eval_s, "wall_s": wall_s, "eval_share": round(eval_s / wall_s, 3)}


def measure_app_cold_start(timeout_s: float = 120) -> float:
    """Seconds from starting `python -m app` to its first served page."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PORT": str(port), "VLPEFT_HOME": tempfile.mkdtemp(prefix="vlpeft-bench-")}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while time.perf_counter() - start < timeout_s:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    if response.status == 200:
                        return round(time.perf_counter() - start, 2)
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("the app did not serve a page in time")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def run_bench(
    steps: int = 20,
    batch_size: int = 32,
    work_dir: str | None = None,
    setting: Setting = Setting(),
    parts: tuple[str, ...] = PARTS,
    compare_tasks: tuple[str, ...] = ("caption", "vqa"),
    points: tuple[str, ...] | None = None,
    against: str | None = None,
    runs_json: Path | None = None,
    resident: bool = False,
) -> dict:
    work = Path(work_dir or tempfile.mkdtemp(prefix="vlpeft-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"setting": dataclasses.asdict(setting), "batch_size": batch_size, "steps": steps}
    if "train" in parts:
        configs = [(m, "both") for m in BENCH_METHODS] + [(m, "text") for m in BENCH_METHODS if m != "full"]
        train_rows = [_in_subprocess(method, towers, steps, batch_size, setting=setting) for method, towers in configs]
        train_rows += [
            _in_subprocess("prompt", towers, steps, batch_size, budget, setting)
            for towers in ("both", "text")
            for budget in PROMPT_BUDGETS
        ]
        result["train"] = train_rows
    if "compare" in parts:
        compares = [
            measure_compare(work, task, towers, setting=setting)
            for task in compare_tasks
            for towers in ("both", "text")
        ]
        result["compare"] = [row for c in compares for row in c["rows"]]
        result["compare_six_within_target"] = {f"{c['task']}/{c['towers']}": c["six_within_target"] for c in compares}
        result["compare_outputs"] = {f"{c['task']}/{c['towers']}": c["outputs"] for c in compares}
    if "eval" in parts:
        eval_share = measure_eval_share(work, setting)
        result["eval_share"], result["eval"] = eval_share["eval_share"], eval_share
    if "app" in parts:
        result["app_cold_start_s"] = measure_app_cold_start()
    if "paths" in parts:
        result["speed_paths"] = measure_speed_paths(batch_size=batch_size, setting=setting)
        result["speed_paths"] += measure_validation_paths(setting=setting)
    if "runs" in parts:
        result["runs"] = measure_runs(
            points or REPLAY_POINTS, against, work / "replay", log=_progress, out=runs_json, resident=resident
        )
    result["machine"] = _machine()
    return result


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _machine() -> dict:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def print_table(result: dict) -> None:
    if result.get("train"):
        print(
            f"{'method':<17} {'towers':<6} {'budget':>7} {'trainable':>10} {'samples/s':>10} {'step s':>8} "
            f"{'vs full':>8} {'peak MB':>8}"
        )
    for row in result.get("train", []):
        print(
            f"{row['method']:<17} {row['towers']:<6} {row['budget']:>7} {row['trainable_params']:>10,} "
            f"{row['samples_per_s']:>10.1f} {row['step_s']:>8.3f} {row['speedup_vs_full']:>7.2f}x "
            f"{row['peak_mem_mb']:>8.0f}"
        )
    for key, within in result.get("compare_six_within_target", {}).items():
        task, towers = key.split("/")
        times = ", ".join(
            f"{row['adapters']}: {1000 * row['latency_s']:.1f} ms"
            for row in result["compare"]
            if row["task"] == task and row["towers"] == towers
        )
        verdict = "within" if within else "over"
        print(
            f"compare ({task}, adapters trained with --towers {towers}), columns: {times}; 6 columns {verdict} "
            f"{COMPARE_TARGET_S:g} s"
        )
    if "eval" in result:
        print(
            f"evaluation share of a default run: {100 * result['eval_share']:.1f} % "
            f"({result['eval']['eval_s']:.1f} s of {result['eval']['wall_s']:.1f} s)"
        )
    for row in result.get("speed_paths", []):
        print(
            f"{row['path']} ({row['measured']}): {row['fast_s']:.3f} s against {row['plain_s']:.3f} s plain, "
            f"saves {100 * row['saving']:.1f} %"
        )
    if "runs" in result:
        print_runs(result["runs"])
    if "app_cold_start_s" in result:
        print(f"app cold start to first page: {result['app_cold_start_s']:.1f} s")
