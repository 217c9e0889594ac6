"""Caption metrics as in the COCO caption evaluation: PTB tokenization, then BLEU-1..4, METEOR, ROUGE-L, CIDEr-D.

The scorers are pycocoevalcap's (its `Cider` is CIDEr-D). Two of its parts are replaced: the PTB tokenizer
wrapper, which writes its temp file inside the installed package (fails on a read-only site-packages), and
the per-evaluation METEOR process, which is started once per process and shared (Java needs ~7 s to load
METEOR's paraphrase table). SPICE is left out: it downloads Stanford CoreNLP. The tokenizer and METEOR
need Java.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pycocoevalcap.tokenizer.ptbtokenizer as _pycoco_ptb
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from training.errors import UserError

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")
PER_SAMPLE_METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")
SINGLE_CAPTION_METRICS = ("BLEU-4", "METEOR", "ROUGE-L")

JAVA_MISSING_MESSAGE = (
    "Caption metrics need Java (for the PTB tokenizer and METEOR), and no `java` was found on PATH: "
    "install it, e.g. `apt-get install openjdk-17-jre-headless`, and start again."
)

PTB_TOKENIZER_JAR = Path(_pycoco_ptb.__file__).with_name("stanford-corenlp-3.4.1.jar")

# The tokens pycocoevalcap drops after tokenizing. It also lists -LRB-, -RRB-, -LCB- and -RCB-, which never
# match the lower-cased output, so brackets stay as "-lrb-" etc. there; they stay here too, for the same scores.
_PUNCTUATION_TOKENS = frozenset({"''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"})


def find_java() -> str | None:
    """The `java` executable on PATH, or None."""
    return shutil.which("java")


def java_available() -> bool:
    """Whether caption metrics can run here (they need Java)."""
    return find_java() is not None


def require_java() -> str:
    """The `java` executable; a UserError that says how to install it if there is none."""
    java = find_java()
    if java is None:
        raise UserError(JAVA_MISSING_MESSAGE)
    return java


def ptb_tokenize(texts: list[str]) -> list[str]:
    """Tokenize as the COCO evaluation does: Stanford PTBTokenizer, lower-cased, punctuation tokens dropped."""
    java = require_java()
    # Any line break (\r, \f, U+2028, ...) would split a caption over two output lines and shift the rest.
    lines = [" ".join(text.split()) for text in texts]
    if not any(lines):
        return lines
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", suffix=".txt", prefix="ptb-", dir=tempfile.gettempdir(), delete=False
    ) as handle:
        handle.write("".join(f"{line}\n" for line in lines))
    command = [java, "-cp", str(PTB_TOKENIZER_JAR), "edu.stanford.nlp.process.PTBTokenizer"]
    command += ["-preserveLines", "-lowerCase", "-encoding", "utf-8", handle.name]
    try:
        result = subprocess.run(command, capture_output=True, check=False)
    finally:
        os.remove(handle.name)
    if result.returncode != 0:
        raise RuntimeError(f"The PTB tokenizer failed: {result.stderr.decode(errors='replace').strip()}")
    tokenized = result.stdout.decode("utf-8").split("\n")
    if len(tokenized) != len(lines) + 1 or tokenized[-1]:
        raise RuntimeError(f"The PTB tokenizer returned {len(tokenized) - 1} lines for {len(lines)} captions.")
    return [" ".join(token for token in line.split() if token not in _PUNCTUATION_TOKENS) for line in tokenized[:-1]]


class _SharedMeteor(Meteor):
    """pycocoevalcap's METEOR client, closed without its lock and only by the process that started it."""

    def __init__(self) -> None:
        super().__init__()
        self.owner_pid = os.getpid()

    def close(self) -> str:
        """Stop the Java process; return what it wrote to stderr."""
        self.meteor_p.kill()
        _, stderr = self.meteor_p.communicate()
        return stderr.decode(errors="replace").strip()

    def __del__(self) -> None:
        # Unlike pycocoevalcap's __del__: no lock (a failed call leaves it held), and a forked child
        # leaves its parent's process alone.
        if getattr(self, "owner_pid", None) == os.getpid() and self.meteor_p.returncode is None:
            self.close()


_meteor: _SharedMeteor | None = None
_meteor_lock = threading.Lock()


def _shared_meteor() -> _SharedMeteor:
    """The process-wide METEOR client, started on first use (the caller holds `_meteor_lock`)."""
    global _meteor
    if _meteor is None or _meteor.owner_pid != os.getpid():
        _meteor = _SharedMeteor()
    return _meteor


def start_meteor() -> None:
    """Start the shared METEOR process now, so that its ~7 s of loading overlaps other work (e.g. training)."""
    require_java()
    with _meteor_lock:
        _shared_meteor()


def _meteor_scores(references: dict[str, list[str]], hypotheses: dict[str, list[str]]) -> tuple[float, list[float]]:
    global _meteor
    with _meteor_lock:
        meteor = _shared_meteor()
        try:
            return meteor.compute_score(references, hypotheses)
        except (OSError, ValueError) as error:
            _meteor = None
            stderr = meteor.close()
            message = f"The METEOR Java process failed ({stderr or error}); it restarts on the next call."
            raise RuntimeError(message) from error


def _check_inputs(predictions: dict[str, str], references: dict[str, list[str]]) -> None:
    if predictions.keys() != references.keys():
        raise ValueError("predictions and references must have the same image ids")
    if not predictions:
        raise ValueError("no captions to score")
    for image_id, captions in references.items():
        if isinstance(captions, str) or not captions:
            raise ValueError(f"image {image_id!r} needs a non-empty list of reference captions")


def _tokenized(predictions: dict[str, str], references: dict[str, list[str]]) -> tuple[list[str], dict, dict]:
    """(image ids, hypotheses, references) tokenized by the PTB tokenizer in one Java call, as the scorers take them."""
    image_ids = list(predictions)
    texts = [predictions[image_id] for image_id in image_ids]
    texts += [caption for image_id in image_ids for caption in references[image_id]]
    tokens = iter(ptb_tokenize(texts))
    hypotheses = {image_id: [next(tokens)] for image_id in image_ids}
    refs = {image_id: [next(tokens) for _ in references[image_id]] for image_id in image_ids}
    return image_ids, hypotheses, refs


def caption_scores_per_sample(
    predictions: dict[str, str], references: dict[str, list[str]]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Corpus scores (keys `METRICS`) and per-image scores (keys `PER_SAMPLE_METRICS`) in one pass.

    `predictions` maps an image id to its generated caption, `references` to its reference captions.
    BLEU, METEOR and ROUGE-L are on a 0..1 scale, CIDEr-D on 0..10. BLEU and METEOR corpus scores pool
    n-gram and match counts over images (they are not the mean of the per-image scores); ROUGE-L and CIDEr-D
    are means. Per-image CIDEr-D uses document frequencies from the whole evaluated set. An empty prediction
    scores 0 on every metric.
    """
    _check_inputs(predictions, references)
    start_meteor()  # Java loads METEOR's paraphrases while the tokenizer runs
    image_ids, hypotheses, refs = _tokenized(predictions, references)

    bleu, bleu_per_image = Bleu(4).compute_score(refs, hypotheses, verbose=0)
    _, rouge_per_image = Rouge().compute_score(refs, hypotheses)
    if any(caption for captions in refs.values() for caption in captions):
        _, cider_per_image = Cider().compute_score(refs, hypotheses)
    else:  # pycocoevalcap's CIDEr fails on a reference set without a single n-gram
        cider_per_image = [0.0] * len(image_ids)
    meteor, meteor_per_image = _meteor_scores(refs, hypotheses)

    per_sample: dict[str, dict[str, float]] = {}
    for index, image_id in enumerate(image_ids):
        values = (bleu_per_image[3][index], meteor_per_image[index], rouge_per_image[index], cider_per_image[index])
        # ROUGE-L gives an empty prediction 1.0 against an empty reference; an empty prediction is worth 0.
        empty = not hypotheses[image_id][0]
        per_sample[image_id] = {
            name: 0.0 if empty else float(value) for name, value in zip(PER_SAMPLE_METRICS, values, strict=True)
        }

    def mean(name: str) -> float:
        return sum(scores[name] for scores in per_sample.values()) / len(per_sample)

    corpus = {f"BLEU-{n + 1}": float(bleu[n]) for n in range(4)}
    corpus.update({"METEOR": float(meteor), "ROUGE-L": mean("ROUGE-L"), "CIDEr-D": mean("CIDEr-D")})
    return corpus, per_sample


def caption_scores(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """Corpus BLEU-1..4, METEOR, ROUGE-L (0..1) and CIDEr-D (0..10) of predicted captions against references."""
    return caption_scores_per_sample(predictions, references)[0]


def single_caption_scores(prediction: str, references: list[str]) -> dict[str, float]:
    """BLEU-4, METEOR and ROUGE-L of one caption against its references, needing no evaluated set.

    CIDEr-D is left out: it weights n-grams by how rare they are across the evaluated set's images, and on a
    single image every n-gram is in every image, so it is always 0. Score a set with
    `caption_scores_per_sample` to get a per-image CIDEr-D.
    """
    _, per_sample = caption_scores_per_sample({"image": prediction}, {"image": references})
    return {name: per_sample["image"][name] for name in SINGLE_CAPTION_METRICS}


def cider_d(predictions: dict[str, str], references: dict[str, list[str]]) -> float:
    """Corpus CIDEr-D (0..10) alone: what validation during training needs, without METEOR's Java round trip."""
    _check_inputs(predictions, references)
    image_ids, hypotheses, refs = _tokenized(predictions, references)
    if not any(caption for captions in refs.values() for caption in captions):
        return 0.0
    per_image = Cider().compute_score(refs, hypotheses)[1]
    return float(
        sum(0.0 if not hypotheses[i][0] else float(v) for i, v in zip(image_ids, per_image, strict=True))
        / len(image_ids)
    )
