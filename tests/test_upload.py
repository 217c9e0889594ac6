"""Datasets uploaded as a zip: what is refused (and the message that names it), and what is stored."""

from __future__ import annotations

import io
import json
import shutil
import stat
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from app.services import Services
from app.settings import Settings
from app.tabs import compare, data, train
from tests.conftest import write_tiny_dataset
from tests.test_app import LIMITS, form
from training.data.archive import ArchiveLimits, install_zip, stored_datasets, summarize
from training.data.dataset import load_dataset
from training.errors import UserError


def zip_folder(folder: Path, target: Path, prefix: str = "", skip: tuple[str, ...] = ()) -> Path:
    """The folder as a zip, its files under `prefix` (a top-level folder, as zipping a folder gives)."""
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder).as_posix()
            if path.is_file() and not relative.startswith(skip):
                archive.write(path, prefix + relative)
    return target


def add_entry(archive_path: Path, name: str, data: bytes = b"", mode: int | None = None) -> None:
    with zipfile.ZipFile(archive_path, "a") as archive:
        info = zipfile.ZipInfo(name)
        if mode is not None:
            info.external_attr = mode << 16
        archive.writestr(info, data)


def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "datasets"


@pytest.fixture
def good_zip(tiny_caption_dataset, tmp_path: Path) -> Path:
    return zip_folder(tiny_caption_dataset, tmp_path / "good.zip", prefix="shapes/")


def refused(archive: Path, home: Path, task: str = "caption", **options) -> str:
    with pytest.raises(UserError) as caught:
        install_zip(archive, "shapes", task, home, **options)
    assert not (home / "shapes").exists()
    assert not home.is_dir() or not any(home.iterdir())  # nothing half-unpacked is left behind
    return str(caught.value)


def test_a_good_zip_is_stored_under_its_name_and_loads_like_any_dataset_folder(good_zip, home):
    stored = install_zip(good_zip, "shapes", "caption", home)
    assert stored.path == home / "shapes" and stored.task == "caption"
    assert [(d.name, d.task) for d in stored_datasets(home)] == [("shapes", "caption")]
    dataset = load_dataset(str(stored.path), "caption")
    summary = summarize(dataset)
    assert summary.examples == {"train": 24, "validation": 4, "test": 6}
    assert summary.images == summary.examples and summary.top_answers == []
    assert sorted(p.name for p in home.iterdir()) == ["shapes"]  # no staging folder left behind


def test_vqa_summary_counts_each_questions_most_common_answer(tiny_vqa_dataset, home, tmp_path):
    archive = zip_folder(tiny_vqa_dataset, tmp_path / "vqa.zip")  # splits at the top of the zip
    stored = install_zip(archive, "shapes-qa", "vqa", home)
    summary = summarize(load_dataset(str(stored.path), "vqa"))
    assert summary.examples == {"train": 32, "validation": 8, "test": 12}
    assert summary.images == {"train": 16, "validation": 4, "test": 6}
    assert summary.questions_counted == 32 and sum(n for _, n in summary.top_answers) <= 32
    assert "no" not in dict(summary.top_answers)  # one "no" among nine real answers is never the majority
    assert set(dict(summary.top_answers)) <= {"red", "green", "blue", "yellow", "square", "circle"}


def test_an_existing_name_is_kept_unless_replace_is_asked(good_zip, home, tiny_vqa_dataset, tmp_path):
    install_zip(good_zip, "shapes", "caption", home)
    with pytest.raises(UserError, match="already a dataset named 'shapes'.*tick Replace"):
        install_zip(good_zip, "shapes", "caption", home)
    vqa_zip = zip_folder(tiny_vqa_dataset, tmp_path / "vqa.zip")
    install_zip(vqa_zip, "shapes", "vqa", home, replace=True)
    assert [(d.name, d.task) for d in stored_datasets(home)] == [("shapes", "vqa")]
    assert sorted(p.name for p in home.iterdir()) == ["shapes"]


@pytest.mark.parametrize("name", ["", "../up", "Shapes", "a/b", ".hidden", "x" * 49, "white space"])
def test_unsafe_names_are_refused(good_zip, home, name):
    with pytest.raises(UserError, match="cannot name a dataset"):
        install_zip(good_zip, name, "caption", home)


def test_a_missing_split_is_named(tiny_caption_dataset, home, tmp_path):
    archive = zip_folder(tiny_caption_dataset, tmp_path / "no-test.zip", skip=("test/",))
    assert "The test split is missing: the zip has no test/ folder" in refused(archive, home)


def test_a_misnamed_split_gets_the_right_name(tiny_caption_dataset, home, tmp_path):
    archive = zip_folder(tiny_caption_dataset, tmp_path / "val.zip", skip=("validation/",))
    add_entry(archive, "val/metadata.jsonl", b"")
    assert "val/ is not a split name: rename it validation/" in refused(archive, home)


def test_a_bad_json_line_is_named_by_split_line_and_reason(tiny_caption_dataset, home, tmp_path):
    archive = zip_folder(tiny_caption_dataset, tmp_path / "bad.zip", prefix="shapes/", skip=("train/metadata",))
    lines = (tiny_caption_dataset / "train" / "metadata.jsonl").read_text().splitlines()
    lines[2] = '{"file_name": "0002.png", "captions": ["a red'
    add_entry(archive, "shapes/train/metadata.jsonl", "\n".join(lines).encode())
    message = refused(archive, home)
    assert message.startswith("train/metadata.jsonl line 3: not valid JSON")
    assert str(home) not in message  # where it was unpacked means nothing to the person


def test_a_missing_field_is_named(tiny_caption_dataset, home, tmp_path):
    archive = zip_folder(tiny_caption_dataset, tmp_path / "field.zip", skip=("test/metadata",))
    add_entry(archive, "test/metadata.jsonl", json.dumps({"file_name": "0000.png", "caption": ["a"]}).encode())
    assert refused(archive, home).startswith("test/metadata.jsonl line 1: missing field 'captions'")


@pytest.mark.parametrize("name", ["../evil.png", "train/../../evil.png", "/etc/evil.png", "C:/evil.png"])
def test_a_path_escaping_the_folder_is_refused(good_zip, home, name):
    add_entry(good_zip, name, png_bytes())
    message = refused(good_zip, home)
    assert repr(name) in message and ("outside its folder" in message or "absolute path" in message)
    assert not (home.parent / "evil.png").exists()


def test_a_symbolic_link_is_refused(good_zip, home):
    add_entry(good_zip, "shapes/train/link.png", b"/etc/passwd", mode=stat.S_IFLNK | 0o777)
    assert "'shapes/train/link.png' in the zip is a symbolic link" in refused(good_zip, home)


def test_metadata_pointing_outside_the_split_is_refused(tiny_caption_dataset, home, tmp_path):
    archive = zip_folder(tiny_caption_dataset, tmp_path / "escape.zip", skip=("train/metadata",))
    row = {"file_name": "../test/0000.png", "captions": ["a"]}
    add_entry(archive, "train/metadata.jsonl", json.dumps(row).encode())
    assert refused(archive, home).startswith(
        "train/metadata.jsonl line 1: field 'file_name' ('../test/0000.png') must be a path inside the train/ folder"
    )


def test_a_non_image_is_named_by_its_path(good_zip, home):
    add_entry(good_zip, "shapes/validation/notes.png", b"#!/bin/sh\necho this is not an image\n")
    assert refused(good_zip, home) == (
        "validation/notes.png in the zip is not a readable image: it is in another format, not a picture at all, or "
        "damaged or cut short. Images must be PNG, JPEG, WebP, BMP or GIF. Replace it with the picture or remove it, "
        "then upload the zip again."
    )


def test_an_image_in_a_format_that_runs_a_program_is_refused(good_zip, home):
    add_entry(good_zip, "shapes/train/figure.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n")
    assert refused(good_zip, home).startswith("train/figure.eps in the zip is not a readable image")


def test_too_many_files_are_refused_before_anything_is_written(good_zip, home):
    message = refused(good_zip, home, limits=ArchiveLimits(max_files=10))
    assert "holds 38 files: the limit is 10" in message


def test_too_many_bytes_unpacked_are_refused_before_anything_is_written(tmp_path, home):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as opened:
        opened.writestr("train/metadata.jsonl", b"\n" * 3_000_000)  # 3 MB of newlines: a few KB compressed
    assert archive.stat().st_size < 50_000
    assert "unpacks to 3.0 MB: the limit is 1.0 MB" in refused(archive, home, limits=ArchiveLimits(max_bytes=1_000_000))


def test_a_file_that_is_not_a_zip_is_refused(tmp_path, home):
    (tmp_path / "data.zip").write_text("not a zip")
    assert "not a readable zip file" in refused(tmp_path / "data.zip", home)


def test_a_declared_task_that_differs_is_named(good_zip, home):
    assert "dataset.json says it is a caption dataset, not a vqa one" in refused(good_zip, home, task="vqa")


def test_archiver_clutter_is_left_out(good_zip, home):
    add_entry(good_zip, "__MACOSX/shapes/train/._0000.png", b"resource fork")
    add_entry(good_zip, "shapes/train/.DS_Store", b"finder")
    stored = install_zip(good_zip, "shapes", "caption", home)
    assert not (stored.path / "train" / ".DS_Store").exists() and not (home / "__MACOSX").exists()


# --- in the app: added, offered in Train and Compare --------------------------------------------------------


def app_services(home: Path, model: Path, caption: Path, vqa: Path, **overrides) -> Services:
    return Services(
        Settings(
            base_model=str(model),
            datasets={"caption": str(caption), "vqa": str(vqa)},
            home=home,
            limits=LIMITS,
            results_dir=home / "results",
            **overrides,
        )
    )


@pytest.fixture
def services(tmp_path: Path, tiny_model_dir, tiny_caption_dataset, tiny_vqa_dataset):
    made = app_services(tmp_path / "home", tiny_model_dir, tiny_caption_dataset, tiny_vqa_dataset)
    yield made
    made.close()


@pytest.fixture
def own_zip(tmp_path: Path) -> tuple[Path, Path]:
    """A caption dataset unlike the app's (another seed, no validation split) and its zip."""
    folder = write_tiny_dataset(tmp_path / "own", "caption", {"train": 6, "test": 3}, seed=7)
    return folder, zip_folder(folder, tmp_path / "own.zip", prefix="own/")


def test_an_added_dataset_is_offered_in_train_and_compare(services, own_zip):
    folder, archive = own_zip
    preview = data.add_dataset(services, str(archive), "mine", "caption", False)
    # As training will see it: without a validation split of its own, one training image is held out for it.
    assert preview.summary.examples == {"train": 5, "validation": 1, "test": 3} and len(preview.examples) == 5
    rows = [json.loads(line) for line in (folder / "train" / "metadata.jsonl").read_text().splitlines()]
    assert {label for _, label in preview.examples} <= {row["captions"][0] for row in rows}
    assert Image.open(preview.examples[0][0]).size == (192, 192)
    text = data.preview_text(preview)
    assert "**mine** (image captioning) is added" in text and "train 5 · validation 1 · test 3" in text
    assert "has no validation split of its own: 1 of its training images" in text

    assert ("mine (your upload)", "mine") in train.dataset_choices(services, "caption")
    assert [value for _, value in train.dataset_choices(services, "vqa")] == ["embedded"]
    config = services.run_config(**form(dataset="mine", max_steps=2))
    assert config.dataset == str(services.datasets_home.resolve() / "mine")
    assert services.training_size(config).split_size == 5  # one of the six training images is held out

    assert len(compare.gallery(services, "caption", "mine")) == 3
    page = compare.compare(services, "caption", [], None, 0, None, "mine")
    expected = json.loads((folder / "test" / "metadata.jsonl").read_text().splitlines()[0])["captions"]
    assert all(caption in page for caption in expected) and "this image: BLEU-4" in page
    with pytest.raises(UserError, match="is a caption dataset"):
        services.run_config(**form(task="vqa", dataset="mine"))
    with pytest.raises(UserError, match="no vqa dataset named 'mine'"):
        compare.compare(services, "vqa", [], "what color is it ?", 0, None, "mine")


def test_a_vqa_preview_shows_the_answer_distribution(services, tiny_vqa_dataset, tmp_path):
    preview = data.add_dataset(services, str(zip_folder(tiny_vqa_dataset, tmp_path / "q.zip")), "qa", "vqa", False)
    text = data.preview_text(preview)
    assert "train 32 on 16 images · validation 8 on 4 images · test 12 on 6 images" in text
    assert "| answer | questions | share |" in text and "holds out" not in text
    answer, count = preview.summary.top_answers[0]
    assert f"| {answer} | {count} | {100 * count / 32:.0f} % |" in text
    assert " → " in preview.examples[0][1]


def test_nothing_is_added_without_a_zip_or_in_the_public_demo(
    services, own_zip, tmp_path, tiny_model_dir, tiny_caption_dataset, tiny_vqa_dataset
):
    with pytest.raises(UserError, match="Choose a zip file"):
        data.add_dataset(services, None, "mine", "caption", False)
    with pytest.raises(UserError, match="'embedded' stands for the app's own dataset"):
        data.add_dataset(services, str(own_zip[1]), "embedded", "caption", False)
    demo = app_services(tmp_path / "demo", tiny_model_dir, tiny_caption_dataset, tiny_vqa_dataset, demo=True)
    with pytest.raises(UserError, match="public demo"):
        data.add_dataset(demo, str(own_zip[1]), "mine", "caption", False)
    demo.close()


def test_a_dataset_a_live_job_uses_is_not_replaced_under_it(services, own_zip):
    data.add_dataset(services, str(own_zip[1]), "mine", "caption", False)
    config = services.run_config(**form(dataset="mine", max_steps=2))
    job_id = services.submit(config, "someone")  # queued: no worker runs in these tests
    with pytest.raises(UserError) as caught:
        data.add_dataset(services, str(own_zip[1]), "mine", "caption", True)
    assert f"used by the run {services.run(job_id).label}, queued or running: replace it once that run" in str(
        caught.value
    )
    assert job_id not in str(caught.value) and services.run(job_id).label.startswith("LoRA 2k · 100 % of mine")
    services.store.cancel(job_id, by="someone")
    assert data.add_dataset(services, str(own_zip[1]), "mine", "caption", True).stored.name == "mine"


def test_an_added_dataset_is_published_and_comes_back_after_a_restart_on_an_empty_disk(
    tmp_path, tiny_model_dir, tiny_caption_dataset, tiny_vqa_dataset, own_zip
):
    from tests.test_durable import WriteOnceWatch

    bucket, home = tmp_path / "bucket", tmp_path / "home"
    watch = WriteOnceWatch(bucket)
    first = app_services(home, tiny_model_dir, tiny_caption_dataset, tiny_vqa_dataset, durable=bucket)
    data.add_dataset(first, str(own_zip[1]), "mine", "caption", False)
    config = first.run_config(**form(dataset="mine", max_steps=2))
    local = first.datasets_home / "mine"
    assert watch.check() > 0
    first.close()

    shutil.rmtree(home)  # the Space restarts: its local disk is empty, the bucket is kept
    again = app_services(home, tiny_model_dir, tiny_caption_dataset, tiny_vqa_dataset, durable=bucket)
    assert [(d.name, d.task) for d in again.uploaded_datasets()] == [("mine", "caption")]
    assert again.run_config(**form(dataset="mine", max_steps=2)).dataset == config.dataset == str(local.resolve())
    assert len(compare.gallery(again, "caption", "mine")) == 3

    # A replacement is a new version on the bucket; nothing published before is rewritten.
    other = write_tiny_dataset(tmp_path / "other", "caption", {"train": 4, "test": 2}, seed=3)
    data.add_dataset(again, str(zip_folder(other, tmp_path / "other.zip", prefix="other/")), "mine", "caption", True)
    watch.check()
    again.close()
    shutil.rmtree(home)
    third = app_services(home, tiny_model_dir, tiny_caption_dataset, tiny_vqa_dataset, durable=bucket)
    assert len(compare.gallery(third, "caption", "mine")) == 2
    assert len(list((bucket / "datasets" / "mine").iterdir())) == 2
    third.close()


def test_an_interrupted_publication_is_not_restored(tmp_path, good_zip):
    from training.jobs.durable import DurableDatasets

    stored = install_zip(good_zip, "mine", "caption", tmp_path / "home")
    durable = DurableDatasets(tmp_path / "bucket")
    version = durable.publish(stored.path)
    (version / "dataset.json").unlink()  # the copy stopped before its last file
    assert durable.latest() == {} and durable.restore(tmp_path / "empty") == []


def test_an_uploaded_dataset_is_removed_only_when_asked_for_sure_and_no_live_job_uses_it(
    tmp_path, tiny_model_dir, tiny_caption_dataset, tiny_vqa_dataset, own_zip
):
    bucket = tmp_path / "bucket"
    services = app_services(tmp_path / "home", tiny_model_dir, tiny_caption_dataset, tiny_vqa_dataset, durable=bucket)
    data.add_dataset(services, str(own_zip[1]), "mine", "caption", False)
    assert data.uploaded_names(services) == ["mine"]
    with pytest.raises(UserError, match="Tick 'Yes, remove it'"):
        data.remove_dataset(services, "mine", False)
    job = services.submit(services.run_config(**form(dataset="mine", max_steps=100_000)), "ann")
    with pytest.raises(UserError) as caught:
        data.remove_dataset(services, "mine", True)
    assert f"used by the run {services.run(job).label}, queued or running" in str(caught.value)
    services.cancel(job, "ann")

    note = data.remove_dataset(services, "mine", True)
    assert "**mine** is removed" in note and data.uploaded_names(services) == []
    assert not (services.datasets_home / "mine").exists() and not (bucket / "datasets" / "mine").exists()
    assert [value for _, value in train.dataset_choices(services, "caption")] == ["embedded"]
    with pytest.raises(UserError, match="no uploaded dataset named 'mine'"):
        data.remove_dataset(services, "mine", True)
    services.close()
    # It does not come back with a restart either.
    again = app_services(tmp_path / "home", tiny_model_dir, tiny_caption_dataset, tiny_vqa_dataset, durable=bucket)
    assert data.uploaded_names(again) == []
    again.close()


def test_a_preview_names_the_answer_words_the_model_cannot_say_and_the_share_they_touch(
    services, tiny_vqa_dataset, tmp_path
):
    folder = tmp_path / "third-party"
    shutil.copytree(tiny_vqa_dataset, folder)
    lines = (folder / "train" / "metadata.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    for row in rows[:3]:  # three of the 52 questions answered in colours the scene world has no word for
        row["answers"] = ["teal", "teal", "brown"]
    (folder / "train" / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    preview = data.add_dataset(services, str(zip_folder(folder, tmp_path / "tp.zip")), "third-party", "vqa", False)
    assert preview.words.unknown == [("brown", 3), ("teal", 3)]
    assert (preview.words.affected, preview.words.examples) == (3, 52)
    text = data.preview_text(preview)
    assert "⚠️ **Words the model cannot say:** 5.77 % of the examples (3 of 52) use a word of their answers" in text
    assert "*teal* (3)" in text and "never be answered right" in text and "real checkpoint" in text

    clean = data.add_dataset(services, str(zip_folder(tiny_vqa_dataset, tmp_path / "q.zip")), "qa", "vqa", False)
    assert clean.words.unknown == [] and "can say every word of its answers" in data.preview_text(clean)
