"""The app launched for real on the tiny BLIP, with its own job worker, driven through gradio_client."""

from __future__ import annotations

import dataclasses
import io
import json
import signal
import socket
import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from app.main import App, build_app, serve
from app.settings import Settings
from tests.conftest import write_tiny_dataset
from tests.test_upload import zip_folder
from training.jobs.limits import JobLimits
from training.launch.pids import is_alive, signal_group

pytestmark = pytest.mark.slow

LIMITS = JobLimits(max_queued=20, max_queued_per_submitter=20, max_runtime_s=0, max_concurrent=1, stop_grace_s=5)
API_NAMES = {
    "/estimate",
    "/start_job",
    "/job_status",
    "/cancel_job",
    "/list_runs",
    "/compare",
    "/upload_dataset",
    "/list_datasets",
    "/remove_dataset",
    "/list_methods",
    "/which_method",
    "/study_verdicts",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(settings: Settings) -> tuple[App, str]:
    app = build_app(settings)
    port = free_port()
    serve(app, prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    return app, f"http://127.0.0.1:{port}/"


def shut_down(app: App) -> None:
    app.demo.close()
    app.services.close()
    for job in app.services.store.list_jobs():
        if is_alive(job.pid, job.pid_start):
            signal_group(job.pid, signal.SIGKILL)


def tiny_settings(home: Path, model: Path, caption: Path, vqa: Path, **overrides) -> Settings:
    return Settings(
        base_model=str(model),
        datasets={"caption": str(caption), "vqa": str(vqa)},
        home=home,
        limits=LIMITS,
        **overrides,
    )


def wait_for_state(client: Client, job_id: str, states: set[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.predict(job_id, api_name="/job_status")
        if status["state"] in states:
            return status
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not reach {states} in {timeout} s; last: {status}")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir, tiny_caption_dataset, tiny_vqa_dataset):
    home = tmp_path_factory.mktemp("app-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # an unknown model id fails at once
        app, url = launch(tiny_settings(home, tiny_model_dir, tiny_caption_dataset, tiny_vqa_dataset))
        yield app, url
        shut_down(app)


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server[1], verbose=False)


def test_the_api_names_the_main_actions_and_nothing_of_the_ui(client: Client):
    endpoints = client.view_api(print_info=False, return_format="dict")
    assert set(endpoints["named_endpoints"]) == API_NAMES
    assert not endpoints["unnamed_endpoints"]


def test_estimate_start_poll_to_finished_then_compare(client: Client):
    estimate = client.predict("lora", "2k", api_name="/estimate")
    assert estimate["feasible"] and estimate["knob"] == "rank"
    assert 1000 < estimate["trainable_params"] < 3000 and estimate["total_params"] > estimate["trainable_params"]

    job = client.predict(
        task="vqa",
        method="lora",
        budget="2k",
        data_fraction=0.5,
        max_steps=5,
        batch_size=4,
        eval_limit=6,
        api_name="/start_job",
    )
    assert job["state"] in ("queued", "running") and job["steps"] == 5
    assert job["trainable_params"] == estimate["trainable_params"]
    assert job["command"].startswith(
        "python -m training train --task vqa --method lora --budget 2k --data-fraction 0.5"
    )

    status = wait_for_state(client, job["job_id"], {"finished", "failed", "cancelled", "interrupted"})
    assert status["state"] == "finished", status["log_tail"]
    assert (status["step"], status["total_steps"]) == (5, 5)
    assert 0 <= status["metrics"]["accuracy"] <= 100 and status["metrics"]["num_examples"] == 6

    runs = client.predict("vqa", api_name="/list_runs")
    assert runs[0]["id"] == job["job_id"] and runs[0]["trainable_params"] == estimate["trainable_params"]

    columns = client.predict("vqa", [job["job_id"]], "what color is the square ?", 0, api_name="/compare")
    assert [c["method"] for c in columns] == ["zero-shot", "lora"]
    assert columns[1]["budget"] == "2k" and columns[1]["data_fraction"] == 0.5
    assert columns[1]["test_score"] == {"accuracy": status["metrics"]["accuracy"]}
    assert all("VQA accuracy" in c["sample_score"] for c in columns) and columns[0]["answers"]

    picture = Path(job["command"].split("--out ")[1]).parent / "upload.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(picture)
    uploaded = client.predict(
        "vqa", [job["job_id"]], "what color is it ?", None, handle_file(str(picture)), api_name="/compare"
    )
    assert len(uploaded) == 2 and all(c["sample_score"] == {} for c in uploaded)


def test_a_second_job_waits_in_the_queue_and_both_can_be_cancelled(client: Client):
    first = client.predict(
        task="caption", method="lora", budget="2k", max_steps=100_000, batch_size=4, api_name="/start_job"
    )["job_id"]
    wait_for_state(client, first, {"running"})
    second = client.predict(task="caption", method="prefix", budget="1k", max_steps=3, api_name="/start_job")
    assert (second["state"], second["queue_position"]) == ("queued", 1)

    cancelled = client.predict(second["job_id"], api_name="/cancel_job")
    assert cancelled["state"] == "cancelled" and "while queued" in cancelled["reason"]
    client.predict(first, api_name="/cancel_job")
    status = wait_for_state(client, first, {"cancelled", "finished", "failed"}, timeout=60)
    assert status["state"] == "cancelled" and status["reason"].startswith("cancelled by address-127.0.0.1")


@pytest.mark.parametrize(
    ("endpoint", "args", "message"),
    [
        ("/estimate", ("lora", "50%"), None),
        ("/estimate", ("lora", "lots"), "is not understood"),
        ("/estimate", ("lora", "1k", "both", "nobody/no-such-blip"), "Hugging Face Hub cannot be reached"),
        ("/estimate", ("lora", "1k", "sideways"), "towers 'sideways' is not one of vision, text, both"),
        ("/compare", ("bogus", [], "", 0), "task 'bogus' is not one of caption, vqa"),
        ("/job_status", ("x" * 5000,), "There is no job '" + "x" * 40 + "'… (5,000 characters"),
        ("/start_job", ("caption", "lora", "2k", 0), "outside (0, 1]"),
        ("/start_job", ("caption", "lora", "2k", 1.5), "outside (0, 1]"),
        ("/start_job", ("caption", "lora", "90%", 1.0), "cannot reach a budget"),
        ("/compare", ("vqa", [], "", 0), "Type a question"),
        ("/compare", ("vqa", [], "why " * 500, 0), "keep it under"),
        ("/compare", ("caption", [], "", 999), "no test image #999"),
    ],
)
def test_bad_input_gets_its_sentence_and_the_app_stays_up(client: Client, endpoint, args, message):
    if message is None:  # a budget the method cannot reach is an answer, not an error
        result = client.predict(*args, api_name=endpoint)
        assert not result["feasible"] and "Choose a budget in that range" in result["message"]
    else:
        with pytest.raises(Exception, match=message.replace("(", r"\(").replace("]", r"\]")):
            client.predict(*args, api_name=endpoint)
    assert client.predict("lora", "2k", api_name="/estimate")["feasible"]


UNREADABLE_UPLOAD = (
    r"^The file 'upload.png' is not a readable image: .* Images must be PNG, JPEG, WebP, BMP or GIF\. Upload the "
    r"picture in one of those formats"
)


def cut_short_png() -> bytes:
    """A real picture's PNG bytes, cut off halfway (as a broken download leaves it)."""
    out = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(out, format="PNG")  # noise: a PNG that does not compress away
    return out.getvalue()[: len(out.getvalue()) // 2]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path: path.write_text("not a picture"), UNREADABLE_UPLOAD),
        (lambda path: path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64), UNREADABLE_UPLOAD),
        (lambda path: path.write_bytes(cut_short_png()), UNREADABLE_UPLOAD),
        (lambda path: Image.new("L", (10_000, 10_000)).save(path), "too large"),
    ],
    ids=["text", "corrupt", "cut-short", "huge"],
)
def test_a_bad_upload_is_refused_with_a_sentence(client: Client, tmp_path: Path, make, message):
    path = tmp_path / "upload.png"
    make(path)
    with pytest.raises(Exception, match=message) as caught:
        client.predict("caption", [], "", None, handle_file(str(path)), api_name="/compare")
    assert "PIL" not in str(caught.value) and "Error" not in str(caught.value)  # no library or exception names


def test_a_dataset_zip_with_a_damaged_image_is_refused_naming_the_file_and_what_to_do(client: Client, tmp_path: Path):
    folder = write_tiny_dataset(tmp_path / "own", "caption", {"train": 4, "test": 2}, seed=5)
    (folder / "train" / "0001.png").write_bytes(cut_short_png())  # a real PNG, cut off halfway
    archive = handle_file(str(zip_folder(folder, tmp_path / "damaged.zip")))
    with pytest.raises(Exception) as caught:
        client.predict(archive, "damaged", "caption", api_name="/upload_dataset")
    assert str(caught.value) == (
        "train/0001.png in the zip is not a readable image: it is in another format, not a picture at all, or damaged "
        "or cut short. Images must be PNG, JPEG, WebP, BMP or GIF. Replace it with the picture or remove it, then "
        "upload the zip again."
    )
    assert "damaged" not in [d["name"] for d in client.predict("", api_name="/list_datasets")]  # nothing was added


GENERIC = "upstream Gradio app has raised an exception"
WRONG = [None, -1, True, "bogus", [], "x" * 5000]  # each type a JSON client can send, and a long text
VALID = {
    "/estimate": dict(method="lora", budget="2k", towers="both", base_model=""),
    "/start_job": dict(
        task="caption",
        method="lora",
        budget="2k",
        data_fraction=0.5,
        seed=0,
        epochs=None,
        max_steps=1,
        lr=None,
        batch_size=4,
        towers="both",
        base_model="",
        dataset="",
        eval_limit=1,
    ),
    "/job_status": dict(job_id="20261129-103501-ab12cd", log_lines=5),
    "/cancel_job": dict(job_id="20261129-103501-ab12cd"),
    "/list_runs": dict(task=""),
    "/compare": dict(task="caption", run_ids=[], question="", test_image=0),
    "/upload_dataset": dict(archive=None, name="fuzzed", task="caption", replace=False),  # archive: a zip, below
    "/list_datasets": dict(task=""),
    "/remove_dataset": dict(name="no-such-dataset"),
    "/list_methods": {},
    "/which_method": dict(task="vqa", data="300", params="18k"),
    "/study_verdicts": {},
}


def test_every_endpoint_answers_any_wrong_argument_with_a_sentence(
    server, client: Client, tiny_caption_dataset, tmp_path: Path
):
    assert set(VALID) == API_NAMES
    archive = handle_file(str(zip_folder(tiny_caption_dataset, tmp_path / "data.zip")))
    valid = {**VALID, "/upload_dataset": {**VALID["/upload_dataset"], "archive": archive}}
    generic = []
    for endpoint, arguments in valid.items():
        for name in arguments:
            for wrong in WRONG:
                try:
                    client.predict(**{**arguments, name: wrong}, api_name=endpoint)
                except Exception as exc:  # noqa: BLE001 - any error is fine as long as it is a sentence
                    if GENERIC in str(exc) or not str(exc).strip():
                        generic.append((endpoint, name, repr(wrong)[:20]))
    store = server[0].services.store
    for job in store.list_jobs(("queued", "running")):
        store.cancel(job.id, by="test")  # what the fuzzing queued; the next tests need an empty queue
    deadline = time.monotonic() + 120
    while store.list_jobs(("queued", "running")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert generic == [], generic


def test_fresh_clients_from_one_address_share_the_cap_and_nobody_cancels_another_persons_job(server):
    app, url = server
    store = app.services.store
    store.limits, limits = dataclasses.replace(LIMITS, max_queued_per_submitter=2), store.limits
    try:
        started = [
            Client(url, verbose=False).predict(
                task="caption", method="lora", budget="2k", max_steps=100_000, batch_size=4, api_name="/start_job"
            )["job_id"]
            for _ in range(2)
        ]
        with pytest.raises(Exception, match=r"You already have 2 jobs queued or running, the most allowed per person"):
            Client(url, verbose=False).predict(task="caption", method="lora", budget="2k", api_name="/start_job")
        someone_elses = store.submit(store.get(started[0]).run_config, "visitor-someone")
        with pytest.raises(Exception, match="was started by another visitor: only they can cancel it"):
            Client(url, verbose=False).predict(someone_elses, api_name="/cancel_job")
        assert store.get(someone_elses).state == "queued"
        for job_id in started:  # a fresh client from the same address is the same person
            Client(url, verbose=False).predict(job_id, api_name="/cancel_job")
        store.cancel(someone_elses, by="visitor-someone")
    finally:
        store.limits = limits
    for job_id in started:
        assert wait_for_state(Client(url, verbose=False), job_id, {"cancelled"})["state"] == "cancelled"


def test_an_unknown_hub_model_fails_in_seconds_without_the_offline_switch(client: Client, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # this machine has no network
    started = time.monotonic()
    with pytest.raises(Exception, match="Hugging Face Hub cannot be reached"):
        client.predict("lora", "1k", "both", "nobody/no-such-blip", api_name="/estimate")
    assert time.monotonic() - started < 15


def test_a_dataset_zip_is_added_then_named_in_compare(client: Client, tiny_caption_dataset, tmp_path: Path):
    folder = write_tiny_dataset(tmp_path / "own", "caption", {"train": 4, "test": 2}, seed=3)
    archive = handle_file(str(zip_folder(folder, tmp_path / "own.zip")))
    added = client.predict(archive, "api-shapes", "caption", api_name="/upload_dataset")
    assert added["name"] == "api-shapes" and added["splits"]["test"] == {"examples": 2, "images": 2}
    assert (
        added["message"] == "Dataset 'api-shapes' (caption) is added: use dataset='api-shapes' in /start_job and "
        "/compare."
    )
    with pytest.raises(Exception, match="already a dataset named 'api-shapes'"):
        client.predict(archive, "api-shapes", "caption", api_name="/upload_dataset")
    bad = handle_file(str(zip_folder(folder, tmp_path / "bad.zip", skip=("train/",))))
    with pytest.raises(Exception, match="The train split is missing"):
        client.predict(bad, "other", "caption", api_name="/upload_dataset")
    columns = client.predict("caption", [], "", 1, None, "api-shapes", api_name="/compare")
    second = json.loads((folder / "test" / "metadata.jsonl").read_text().splitlines()[1])
    assert columns[0]["references"] == second["captions"] and columns[0]["image_id"] == second["image_id"]

    listed = client.predict("caption", api_name="/list_datasets")  # newest first; other tests may add theirs
    assert listed[0]["name"] == "api-shapes" and listed[0]["task"] == "caption"
    assert "api-shapes" not in [d["name"] for d in client.predict("vqa", api_name="/list_datasets")]
    removed = client.predict("api-shapes", api_name="/remove_dataset")
    assert removed["message"] == "Dataset 'api-shapes' (caption) is removed; the runs trained on it keep their results."
    assert "api-shapes" not in [d["name"] for d in client.predict("", api_name="/list_datasets")]
    with pytest.raises(Exception, match="There is no uploaded dataset named 'api-shapes': pick one from the list"):
        client.predict("api-shapes", api_name="/remove_dataset")
    with pytest.raises(Exception, match="api-shapes"):
        client.predict("caption", [], "", 1, None, "api-shapes", api_name="/compare")
