"""The scene world: determinism, disjoint corpora, answerable questions, vocabulary and the shipped datasets."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import scenes
from training.data.scenes import (
    COLORS,
    PLURALS,
    POSITION_PHRASES,
    SHAPES,
    SIZE_WORDS,
    Scene,
    alt_text,
    answer_prior,
    caption_example,
    caption_references,
    pretrain_example,
    pretrain_pairs,
    pretrain_sentence,
    render_scene,
    sample_scene,
    scene_rng,
    text_words,
    vocabulary_words,
    vqa_example,
    vqa_questions,
    write_caption_dataset,
    write_vqa_dataset,
)

SHIPPED = Path(__file__).resolve().parent.parent / "assets" / "datasets"


def _digest(image: Image.Image) -> str:
    return hashlib.sha1(image.tobytes()).hexdigest()


def _scenes(corpus: str, split: str, count: int) -> list[tuple[Scene, np.random.Generator]]:
    out = []
    for index in range(count):
        rng = scene_rng(corpus, split, index)
        out.append((sample_scene(rng), rng))
    return out


def test_same_seed_gives_identical_pixels_and_texts():
    for index in (0, 7, 12345):
        (a_img, a_text), (b_img, b_text) = pretrain_example(index), pretrain_example(index)
        assert a_text == b_text and a_img.tobytes() == b_img.tobytes()
    a_img, a_row = caption_example("test", 3)
    b_img, b_row = caption_example("test", 3)
    assert a_row == b_row and a_img.tobytes() == b_img.tobytes()
    assert vqa_example("train", 5)[1] == vqa_example("train", 5)[1]
    assert [t for _, t in pretrain_pairs(start=10, count=3)] == [pretrain_example(i)[1] for i in (10, 11, 12)]


def test_different_seed_or_index_gives_different_images():
    base = _digest(pretrain_example(0, seed=0)[0])
    assert _digest(pretrain_example(0, seed=1)[0]) != base
    assert _digest(pretrain_example(1, seed=0)[0]) != base
    assert caption_example("test", 0, seed=1)[1] != caption_example("test", 0, seed=0)[1]


def test_test_images_never_appear_in_train_validation_or_pretraining():
    test_images = {_digest(caption_example("test", i)[0]) for i in range(300)}
    test_images |= {_digest(vqa_example("test", i)[0]) for i in range(350)}
    assert len(test_images) == 650
    seen = set()
    for corpus in ("caption", "vqa"):
        for split, count in (("train", 600), ("validation", 200)):
            seen |= {_digest(render_scene(scene)) for scene, _ in _scenes(corpus, split, count)}
    seen |= {_digest(image) for image, _ in pretrain_pairs(start=0, count=2500)}
    assert len(seen) == 2 * 800 + 2500
    assert not test_images & seen


def test_render_draws_each_object_in_its_colour_at_its_cell():
    for scene, _ in _scenes("caption", "train", 60):
        pixels = np.asarray(render_scene(scene, size=96), dtype=int)
        assert pixels.shape == (96, 96, 3)
        for obj in scene.objects:
            row, col = divmod(obj.cell, 3)
            x, y = int((col + 0.5 + obj.dx) * 32), int((row + 0.5 + obj.dy) * 32)
            assert np.abs(pixels[y, x] - COLORS[obj.color]).max() < 25, (obj, pixels[y, x])


def test_backgrounds_stay_far_from_every_object_colour():
    palette = np.array(list(COLORS.values()))
    for scene, _ in _scenes("pretrain", "train", 300):
        bare = Scene(objects=(), background=scene.background)
        pixels = np.asarray(render_scene(bare, size=32), dtype=int).reshape(-1, 1, 3)
        nearest = np.abs(pixels - palette[None]).max(axis=2).min()
        assert nearest >= 30, scene.background


def test_captions_are_five_distinct_complete_descriptions():
    for scene, rng in _scenes("caption", "train", 200):
        captions = caption_references(scene, rng)
        assert len(captions) == 5 and len(set(captions)) == 5
        for caption in captions:
            assert caption == caption.lower() and not caption.endswith(".")
            for obj in scene.objects:
                assert f"{obj.color} {obj.shape}" in caption
                assert any(phrase in caption for phrase in POSITION_PHRASES[obj.position])


def test_pretraining_mixes_alt_text_with_sentences_in_caption_phrases():
    texts = [text for _, text in pretrain_pairs(start=0, count=1000)]
    # Only sentences have articles; alt-text is bare keywords.
    sentences = [t for t in texts if {"a", "an"} & set(text_words(t))]
    assert 0.35 <= len(sentences) / len(texts) <= 0.45
    phrases = [p for options in POSITION_PHRASES.values() for p in options]
    assert all(any(p in s for p in phrases) for s in sentences)
    alt = [t for t in texts if t not in sentences]
    assert len(set(alt)) > 0.9 * len(alt)
    assert any("clipart" in t for t in alt) and any(t.split()[0] in COLORS for t in alt)


def test_pretraining_sentences_can_keep_the_caption_phrases_without_the_caption_frames():
    clauses = 0
    for scene, rng in _scenes("pretrain", "train", 400):
        sentence = pretrain_sentence(scene, rng, clause_share=0.5, frames=scenes.NON_CAPTION_FRAMES)
        assert "picture of" not in sentence and "image of" not in sentence and not sentence.startswith("there is")
        for obj in scene.objects:
            assert f"{obj.color} {obj.shape}" in sentence
            assert any(phrase in sentence for phrase in POSITION_PHRASES[obj.position])
        clauses += not any(sentence.startswith(frame.split("{")[0]) for frame in scenes.NON_CAPTION_FRAMES)
    assert 0.4 <= clauses / 400 <= 0.6


def _target(words: list[str]) -> dict[str, str]:
    sizes = {w: size for size, options in SIZE_WORDS.items() for w in options}
    target = {}
    for word in words:
        if word in sizes:
            target["size"] = sizes[word]
        elif word in COLORS:
            target["color"] = word
        elif word in SHAPES:
            target["shape"] = word
        else:
            assert word in ("object", "shape", "a", "an", "in", "the", "image"), word
    return target


def _matches(scene: Scene, target: dict[str, str]) -> list:
    return [o for o in scene.objects if all(getattr(o, k) == v for k, v in target.items())]


def _position_in(question: str) -> str:
    found = [(len(p), pos) for pos, options in POSITION_PHRASES.items() for p in options if question.endswith(p + "?")]
    assert found, question
    return max(found)[1]


def _recompute(scene: Scene, question: str, question_type: str) -> str:
    """The answer, worked out from the scene and the question text alone."""
    words = text_words(question)
    if question_type in ("color", "shape", "position"):
        last_the = len(words) - 1 - words[::-1].index("the")
        target = _target(words[last_the + 1 :])
        assert question_type not in target
        (obj,) = _matches(scene, target)
        return {"color": obj.color, "shape": obj.shape, "position": obj.position}[question_type]
    if question_type == "count":
        things = words[2 : words.index("are" if "are" in words else "can")]
        plural = {p: s for s, p in PLURALS.items()}
        if things[-1] in plural:
            return str(len(_matches(scene, {"shape": plural[things[-1]]})))
        return str(len(_matches(scene, _target(things[:-1]))))
    if question_type == "exists":
        start = 2 if words[:2] == ["is", "there"] else 3
        return "yes" if _matches(scene, _target(words[start:])) else "no"
    position = _position_in(question)
    (obj,) = [o for o in scene.objects if o.position == position]
    return obj.color if "color" in words else obj.shape


def test_every_question_has_one_answer_that_the_scene_confirms():
    types = Counter()
    for scene, rng in _scenes("vqa", "train", 600):
        questions = vqa_questions(scene, rng)
        assert 2 <= len(questions) <= 3
        assert len({q["question_type"] for q in questions}) == len(questions)
        for q in questions:
            types[q["question_type"]] += 1
            assert _recompute(scene, q["question"], q["question_type"]) == q["answer"], (scene, q)
            assert len(q["answers"]) == 10
            assert Counter(q["answers"]).most_common(1)[0][0] == q["answer"]
    assert set(types) == set(scenes.QUESTION_TYPES)
    assert min(types.values()) > 0.1 * sum(types.values())


def test_yes_and_no_are_balanced():
    answers = Counter(
        q["answer"]
        for scene, rng in _scenes("vqa", "validation", 1500)
        for q in vqa_questions(scene, rng)
        if q["question_type"] == "exists"
    )
    assert 0.45 <= answers["yes"] / (answers["yes"] + answers["no"]) <= 0.55


def test_annotators_mostly_agree_with_synonyms_and_a_few_mistakes():
    canonical = variants = wrong = 0
    seen = Counter()
    for scene, rng in _scenes("vqa", "test", 800):
        for q in vqa_questions(scene, rng):
            allowed = scenes.ANSWER_VARIANTS.get(q["answer"], (0, ()))[1]
            for answer in q["answers"]:
                seen[answer] += 1
                canonical += answer == q["answer"]
                variants += answer in allowed
                wrong += answer != q["answer"] and answer not in allowed
    total = canonical + variants + wrong
    assert canonical / total > 0.75
    assert 0.02 < wrong / total < 0.08
    assert 0.05 < variants / total < 0.2
    assert seen["grey"] and seen["two"] and seen["upper left"] and seen["middle"]


def test_vocabulary_covers_every_generated_word():
    vocabulary = set(vocabulary_words())
    emitted = set()
    for scene, rng in _scenes("pretrain", "train", 1500):
        texts = [alt_text(scene, rng), pretrain_sentence(scene, rng), *caption_references(scene, rng)]
        for q in vqa_questions(scene, rng):
            texts += [q["question"], *q["answers"]]
        emitted |= {word for text in texts for word in text_words(text)}
    assert emitted <= vocabulary, emitted - vocabulary
    assert len(vocabulary - emitted) < 5, vocabulary - emitted


def test_answer_prior_is_the_majority_answer_per_type():
    rows = [
        {"question_type": "exists", "answers": ["yes"] * 9 + ["no"]},
        {"question_type": "exists", "answers": ["no"] * 8 + ["yes"] * 2},
        {"question_type": "exists", "answers": ["no"] * 10},
        {"question_type": "count", "answers": ["2"] * 7 + ["two"] * 3},
    ]
    assert answer_prior(rows) == {"exists": "no", "count": "2"}


def _read_rows(split_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (split_dir / "metadata.jsonl").read_text().splitlines()]


def test_written_caption_folder_reads_back(tmp_path):
    sizes = {"train": 4, "validation": 2, "test": 3}
    out = write_caption_dataset(tmp_path / "cap", sizes=sizes, seed=3, size=48)
    write_caption_dataset(out, sizes=sizes, seed=3, size=48)  # rewriting replaces the folder in one move
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cap"]
    info = json.loads((out / "dataset.json").read_text())
    assert info == {
        "name": "cap",
        "task": "caption",
        "generator": "scene-world",
        "seed": 3,
        "size": 48,
        "edition": 1,
        "splits": sizes,
        "images": sizes,
    }
    for split, count in sizes.items():
        rows = _read_rows(out / split)
        assert len(rows) == count
        for index, row in enumerate(rows):
            assert row == caption_example(split, index, seed=3)[1]
            assert len(row["captions"]) == 5
            with Image.open(out / split / row["file_name"]) as image:
                assert image.size == (48, 48) and image.mode == "RGB"


def test_written_vqa_folder_reads_back(tmp_path):
    sizes = {"train": 5, "validation": 2, "test": 3}
    out = write_vqa_dataset(tmp_path / "vqa", sizes=sizes)
    info = json.loads((out / "dataset.json").read_text())
    assert info["task"] == "vqa" and info["images"] == sizes
    for split, count in sizes.items():
        rows = _read_rows(out / split)
        assert len(rows) == info["splits"][split] and 2 * count <= len(rows) <= 3 * count
        assert len({r["question_id"] for r in rows}) == len(rows)
        assert len({r["file_name"] for r in rows}) == count
        for row in rows:
            assert set(row) == {"file_name", "question", "answers", "question_type", "question_id", "image_id"}
            assert len(row["answers"]) == 10 and row["question"].endswith("?")
            assert (out / split / row["file_name"]).is_file()


@pytest.mark.parametrize("name", ["scene-caption", "scene-vqa"])
def test_shipped_datasets_are_what_the_generator_writes(name):
    folder = SHIPPED / name
    info = json.loads((folder / "dataset.json").read_text())
    task_sizes = scenes.DEFAULT_CAPTION_SIZES if name == "scene-caption" else scenes.DEFAULT_VQA_SIZES
    assert info["name"] == name and info["seed"] == 0 and info["size"] == 64 and info["images"] == task_sizes
    example = caption_example if name == "scene-caption" else vqa_example
    for split, count in task_sizes.items():
        rows = _read_rows(folder / split)
        assert len(rows) == info["splits"][split]
        by_file = {}
        for row in rows:
            by_file.setdefault(row["file_name"], []).append(row)
        assert len(by_file) == count
        for index in (0, count // 2, count - 1):
            image, expected = example(split, index)
            expected = expected if isinstance(expected, list) else [expected]
            assert by_file[f"{index:06d}.png"] == expected
            with Image.open(folder / split / f"{index:06d}.png") as shipped:
                assert shipped.convert("RGB").tobytes() == image.tobytes()


def test_patch_labels_name_what_each_patch_shows():
    """The dense pre-training targets: object patches carry the object's shape, colour, size and cell; the rest 0."""
    colors = tuple(COLORS)
    for scene, _ in _scenes("pretrain", "train", 40):
        labels = scenes.patch_labels(scene, size=64, patch=8)
        assert labels.shape == (4, 64)
        assert np.array_equal(scenes.patch_labels(scene, size=64, patch=8), labels)
        grid = np.arange(64)
        for obj in scene.objects:
            mine = labels[3] == obj.cell + 1
            assert mine.any(), obj  # every object covers at least one patch
            assert set(labels[0][mine]) == {SHAPES.index(obj.shape) + 1}
            assert set(labels[1][mine]) == {colors.index(obj.color) + 1}
            assert set(labels[2][mine]) == {scenes.SIZES.index(obj.size) + 1}
            rows, cols = divmod(grid[mine], 8)
            # a patch labelled with an object lies in (or next to) that object's grid cell
            assert all(abs(r * 8 + 4 - (obj.cell // 3 + 0.5) * 64 / 3) < 64 / 3 for r in rows)
            assert all(abs(c * 8 + 4 - (obj.cell % 3 + 0.5) * 64 / 3) < 64 / 3 for c in cols)
        background = labels[3] == 0
        assert background.any() and (labels[:, background] == 0).all()


def _four_grams(text: str) -> set[tuple[str, ...]]:
    words = text_words(text)
    return {tuple(words[i : i + 4]) for i in range(len(words) - 3)}


def test_second_edition_references_are_not_in_the_pretraining_text_as_the_first_editions_are():
    """Consistency without a copy: the first edition's references are pre-training sentences (almost every
    4-gram occurs in the corpus); the second edition's annotator style mostly is not."""
    corpus: set[tuple[str, ...]] = set()
    for scene, rng in _scenes("pretrain", "train", 1500):
        corpus |= _four_grams(alt_text(scene, rng)) | _four_grams(pretrain_sentence(scene, rng))
    shared = {}
    for edition in scenes.EDITIONS:
        grams = [
            g
            for scene, rng in _scenes("caption", "validation", 150)
            for c in caption_references(scene, rng, edition=edition)
            for g in _four_grams(c)
        ]
        shared[edition] = sum(g in corpus for g in grams) / len(grams)
    assert shared[1] > 0.95
    assert 0.1 < shared[2] < 0.45  # the objects' own phrases ("a large red circle") are still shared


def test_second_edition_annotators_group_count_order_by_salience_and_mention_the_background():
    grid_phrases = [p for options in POSITION_PHRASES.values() for p in options if p != "in the middle"]
    mentions, counted, total = 0, 0, 0
    for scene, rng in _scenes("caption", "train", 300):
        captions = caption_references(scene, rng, edition=2)
        # A scene of one shape has few wordings (as in the first edition, a repeat fills the five).
        assert len(captions) == 5 and len(set(captions)) >= 4
        shapes = Counter(o.shape for o in scene.objects)
        salient = {o.shape for o in scene.objects if o.size == "large"}
        for caption in captions:
            total += 1
            assert not any(p in caption for p in grid_phrases), caption  # no object's grid cell
            words = text_words(caption)
            first_shape = next(w for w in words if w in SHAPES or w in PLURALS.values() or w == "shapes")
            if salient and first_shape != "shapes":
                assert first_shape in salient | {PLURALS[s] for s in salient}, (scene, caption)
            if "background" in words:
                mentions += 1
                tone = scene.background.tone
                assert ({"dark", "black"} if tone == "dark" else {"light", "pale"}) & set(words), caption
                assert not ({"light", "pale"} if tone == "dark" else {"dark", "black"}) & set(words), caption
            for shape, n in shapes.items():
                same_colour = len({o.color for o in scene.objects if o.shape == shape}) == 1
                if n > 1 and same_colour and "including" not in words:
                    if PLURALS[shape] not in words:  # annotators leave out an all-small group now and then
                        assert all(o.size == "small" for o in scene.objects if o.shape == shape), caption
                        continue
                    counted += 1
                    assert scenes.NUMBER_WORDS[n] in words, caption
    assert 0.5 < mentions / total < 0.7
    assert counted > 50


def test_second_edition_has_the_first_editions_images_and_its_own_vocabulary():
    for index in (0, 5):
        first, second = caption_example("test", index), caption_example("test", index, edition=2)
        assert first[0].tobytes() == second[0].tobytes() and first[1]["captions"] != second[1]["captions"]
    vocabulary = set(vocabulary_words(2))
    emitted = {
        w
        for scene, rng in _scenes("caption", "train", 800)
        for c in caption_references(scene, rng, edition=2)
        for w in text_words(c)
    }
    assert emitted <= vocabulary, emitted - vocabulary
    assert vocabulary - set(vocabulary_words(1)) <= emitted  # every new word is used by the annotators
    with pytest.raises(ValueError, match="edition"):
        caption_references(_scenes("caption", "train", 1)[0][0], np.random.default_rng(0), edition=3)


def test_written_second_edition_caption_folder_declares_its_edition(tmp_path):
    out = write_caption_dataset(tmp_path / "cap2", sizes={"train": 2, "validation": 1, "test": 1}, edition=2)
    assert json.loads((out / "dataset.json").read_text())["edition"] == 2
    row = _read_rows(out / "test")[0]
    assert row["captions"] == caption_example("test", 0, edition=2)[1]["captions"]


def test_pretraining_lists_can_name_the_objects_without_their_positions():
    phrases = [p for options in POSITION_PHRASES.values() for p in options]
    for scene, rng in _scenes("pretrain", "train", 100):
        sentence = pretrain_sentence(scene, rng, clause_share=0.0, frames=("{list}",), position_share=0.0)
        assert not any(p in sentence for p in phrases), sentence
        assert all(f"{obj.color} {obj.shape}" in sentence for obj in scene.objects)
    sentences = [
        pretrain_sentence(scene, rng, 0.0, ("{list}",), 0.5) for scene, rng in _scenes("pretrain", "train", 400)
    ]
    placed = sum(any(p in sentence for p in phrases) for sentence in sentences)
    assert 0.4 <= placed / 400 <= 0.6
