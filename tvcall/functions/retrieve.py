"""Candidate retrieval over the registry's objects (`domain.object`: every function of a family, or of one-off
functions sharing an object).

Two scorers, z-normalised and added: BM25 over the objects' own words (names, zh/en descriptions, object,
attribute and enum phrases, their own training templates; English words, Chinese character uni/bi-grams),
and, once a run has trained one, `FunctionClassifier`, learned from the training utterances, which scores an
object by its best function. The prompt lists the top objects in rank order with a short label, the decoder's
name stage is narrowed to their functions, and the classifier's probabilities over those functions and "no
function" (`Retrieved.prior`) are the name stage's second opinion (`ConstrainedDecoder.prior_weight`).
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import joblib
import numpy as np
from rank_bm25 import BM25Okapi
from scipy.sparse import csr_matrix
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import SGDClassifier

from tvcall.functions.registry import PLACEHOLDER_RE, Registry
from tvcall.functions.spec import LANGS, FunctionSpec

_ASCII_WORD = re.compile(r"[a-z0-9]+")
_CJK = re.compile(r"[\u3400-\u9fff]+")
NO_FUNCTION = "<none>"  # the classifier's label for out-of-scope utterances


class Linker(Protocol):
    """Entity linking against a catalogue of known values (`tvcall.data.mentions.LexiconLinker`)."""

    def linked_objects(self, text: str) -> frozenset[str]: ...  # the objects taking a value `text` mentions
    def word_boundaries(self, text: str) -> frozenset[int]: ...  # where words start and end, a mention one word


def tokens(text: str) -> list[str]:
    text = text.lower()
    out = _ASCII_WORD.findall(text)
    for run in _CJK.findall(text):
        out += list(run) + [run[i:i + 2] for i in range(len(run) - 1)]
    return out


def language(text: str) -> str:
    return "zh" if _CJK.search(text) else "en"


def object_key(name: str) -> str:
    return name.rsplit(".", 1)[0]


def verb_of(name: str) -> str:
    """What a function does to its object (`increase`, `set_temperature`): the same word across a family's objects."""
    return name.rsplit(".", 1)[1]


def _describe(spec: FunctionSpec) -> list[str]:
    parts = [spec.name.replace(".", " ").replace("_", " ")]
    for lang in LANGS:
        parts += spec.description.forms(lang)
        for phrases in (spec.object_phrases, spec.attribute_phrases):
            if phrases is not None:
                parts += phrases.forms(lang)
        parts += [PLACEHOLDER_RE.sub(" ", t) for t in spec.own_templates(lang, "train")]  # test phrasings stay unseen
        for schema in spec.properties.values():
            for surface in schema.get("x-surface", {}).values():
                parts += surface.get(lang, [])
    return parts


def _label(specs: list[FunctionSpec], lang: str) -> str:
    """A few words naming an object in `lang`: its phrase for a family, else its shortest description."""
    if specs[0].object_phrases is not None:
        return specs[0].object_phrases.forms(lang)[0]
    return min((s.description.forms(lang)[0] for s in specs), key=len)


class SparseBM25:
    """rank_bm25's `BM25Okapi` scores (its idf with the epsilon floor, its k1 and b) as one sparse product: a
    term × document matrix of each term's BM25 weight, times the query's term counts. `BM25Okapi.get_scores`
    loops in Python over every document for every query token (8 ms a query over the full registry's objects)."""

    def __init__(self, documents: list[list[str]]) -> None:
        okapi = BM25Okapi(documents)
        self.vocabulary = {word: i for i, word in enumerate(okapi.idf)}
        rows, columns, values = [], [], []
        for doc, frequencies in enumerate(okapi.doc_freqs):
            length_norm = okapi.k1 * (1 - okapi.b + okapi.b * okapi.doc_len[doc] / okapi.avgdl)
            for word, count in frequencies.items():
                rows.append(self.vocabulary[word])
                columns.append(doc)
                values.append(okapi.idf[word] * count * (okapi.k1 + 1) / (count + length_norm))
        self.weights = csr_matrix((values, (rows, columns)), shape=(len(self.vocabulary), len(documents)))

    def get_scores(self, query: list[str]) -> np.ndarray:
        counts = Counter(token for token in query if token in self.vocabulary)
        terms = [self.vocabulary[token] for token in counts]
        return np.asarray(self.weights[terms].T @ np.array(list(counts.values()), dtype=float)).ravel()


def char_ngrams() -> TfidfVectorizer:
    """TF-IDF over character n-grams within words: it reads Chinese without a segmenter and English typos alike."""
    return TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True, lowercase=True)


class FunctionClassifier:
    """Which function a command calls, or none (`NO_FUNCTION`), learned from training utterances: TF-IDF over
    character n-grams within words and a logistic-regression head. Unlike BM25 over the registry's words, it
    learns which n-grams name a function and which only say how people phrase commands. It sees every training
    utterance in seconds, where the LLM's time budget covers a fraction of them.

    Only what scoring needs is kept: the vectorizer, the labels, and the weights as one contiguous float16
    features × labels matrix (sklearn's float64 `coef_` and its transpose took 0.9 GiB of a router's memory at
    1,325 labels; at 3,153 labels float32 took 0.55 GiB). A command has a hundred or so n-grams: scoring gathers
    their rows and sums them in float32."""

    def __init__(self, vectorizer: TfidfVectorizer, labels: Sequence[str], weights: np.ndarray, intercept: np.ndarray) -> None:
        self.vectorizer = vectorizer
        self.labels = [str(label) for label in labels]
        self._weights = np.ascontiguousarray(weights, dtype=np.float16)
        self._intercept = np.asarray(intercept, dtype=np.float32)

    @classmethod
    def fit(cls, texts: Sequence[str], labels: Sequence[str], seed: int = 0) -> FunctionClassifier:
        vectorizer = char_ngrams()
        features = vectorizer.fit_transform(texts)
        return cls.from_sklearn(vectorizer, _sgd(seed).fit(features, list(labels)))

    def extended(self, texts: Sequence[str], labels: Sequence[str], new_labels: Sequence[str], seed: int = 0) -> FunctionClassifier:
        """This classifier with columns for `new_labels`, each fitted one-vs-rest on (texts, labels) over this
        classifier's n-grams; its own columns are kept as they are, so its known labels score as before."""
        new = set(new_labels)
        rest = "\x00rest"  # every other label: the negatives of the new columns
        model = _sgd(seed).fit(self.vectorizer.transform(texts), [label if label in new else rest for label in labels])
        keep = [i for i, label in enumerate(model.classes_) if label != rest]
        return FunctionClassifier(
            self.vectorizer, [*self.labels, *[str(model.classes_[i]) for i in keep]],
            np.concatenate([self._weights.astype(np.float32), model.coef_[keep].T], axis=1),
            np.concatenate([self._intercept, model.intercept_[keep]]))

    @classmethod
    def from_sklearn(cls, vectorizer: TfidfVectorizer, model: SGDClassifier) -> FunctionClassifier:
        return cls(vectorizer, model.classes_, model.coef_.T, model.intercept_)

    def scores(self, text: str) -> np.ndarray:
        """One log-odds score per label (`labels` order)."""
        features = self.vectorizer.transform([text]).tocsr()
        rows = self._weights[features.indices].astype(np.float32)  # only the command's n-grams' rows
        scores = features.data.astype(np.float32) @ rows + self._intercept
        return np.array([-scores[0], scores[0]]) if len(scores) == 1 else scores  # two labels: one margin

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        joblib.dump({"vectorizer": self.vectorizer, "labels": self.labels, "weights": self._weights,
                     "intercept": self._intercept}, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> FunctionClassifier:
        saved = joblib.load(path)
        if isinstance(saved, tuple):  # runs saved before: (vectorizer, sklearn model)
            return cls.from_sklearn(*saved)
        return cls(saved["vectorizer"], saved["labels"], saved["weights"], saved["intercept"])


def _sgd(seed: int) -> SGDClassifier:
    """The classifier's head: logistic regression by SGD, one-vs-rest over the labels."""
    return SGDClassifier(loss="log_loss", alpha=1e-5, max_iter=8, tol=None, random_state=seed, n_jobs=2)


def _logsumexp(values: np.ndarray) -> float:
    top = float(values.max())
    return top + math.log(float(np.exp(values - top).sum()))


def _standardised(scores: np.ndarray) -> np.ndarray:
    return (scores - scores.mean()) / (scores.std() + 1e-9)


@dataclass
class Retrieved:
    objects: list[str]
    scores: list[float]
    functions: list[str]
    options: list[str]  # "domain.object label" lines for the prompt
    prior: dict[str | None, float] = field(default_factory=dict)  # log-probabilities over `functions` and None
    # (no function), summing to one over them (`Retriever._prior`); empty without a classifier


class Retriever:
    def __init__(self, registry: Registry, classifier: FunctionClassifier | None = None) -> None:
        self.registry = registry
        groups: dict[str, list[FunctionSpec]] = defaultdict(list)
        for spec in registry.functions.values():
            groups[object_key(spec.name)].append(spec)
        self.objects = list(groups)
        self.index_of = {key: i for i, key in enumerate(self.objects)}
        self.functions = {key: [s.name for s in specs] for key, specs in groups.items()}
        self.labels = {(key, lang): _label(specs, lang) for key, specs in groups.items() for lang in LANGS}
        self.index = SparseBM25([tokens(" ".join(p for s in groups[key] for p in _describe(s))) for key in self.objects])
        self.object_sharpness = 1.0  # the object ranking's scores are multiplied by it in the prior (calibrated on dev)
        self.linker: Linker | None = None
        self.link_weight = 0.0  # added to a linked object's score (calibrated on dev; 0: linking off)
        # How a routed text opens with the previous call in a conversation: (that call, the command). The format is
        # the prompt renderer's (`tvcall.data.prompt.split_context`), which the engines hand in.
        self.read_context: Callable[[str], tuple[dict[str, Any] | None, str]] = lambda text: (None, text)
        # Functions added after the run was trained: their log prior gains `unseen_boost` against the model's
        # preference for the names it was trained on (chosen when the registry is refreshed)
        self.unseen: frozenset[str] = frozenset()
        self.unseen_boost = 0.0
        self._verbs: tuple[frozenset[str], dict[str, np.ndarray]] = (frozenset(), {})  # `_verb_columns`' cache
        self.use_classifier(classifier)

    def use_classifier(self, classifier: FunctionClassifier | None) -> None:
        self.classifier = classifier
        if classifier is not None:
            column = {label: i for i, label in enumerate(classifier.labels)}
            self._column = {name: column.get(name, -1) for names in self.functions.values() for name in names}
            self._column[None] = column.get(NO_FUNCTION, -1)  # -1: a label the classifier never saw
            position = {key: i for i, key in enumerate(self.objects)}
            labelled = [(i, position[object_key(label)]) for label, i in column.items()
                        if label != NO_FUNCTION and object_key(label) in position]
            self._label_columns = np.array([i for i, _ in labelled], dtype=int)
            self._label_objects = np.array([o for _, o in labelled], dtype=int)
        self._verbs = (frozenset(), {})

    def _verb_columns(self) -> dict[str, np.ndarray]:
        """The classifier's columns of the functions the run was trained on, by verb."""
        if self._verbs[0] != self.unseen:
            by_verb: dict[str, list[int]] = defaultdict(list)
            for name, column in self._column.items():
                if name is not None and column >= 0 and name not in self.unseen:
                    by_verb[verb_of(name)].append(column)
            self._verbs = (self.unseen, {verb: np.array(columns, dtype=int) for verb, columns in by_verb.items()})
        return self._verbs[1]

    def _within_new_object(self, names: list[str], log_p: np.ndarray) -> np.ndarray | None:
        """Log-scores of a new object's functions borrowed from the known objects: each function's verb gets the
        classifier's mean probability of that verb on a known object ("too low" → an `increase`; the mean, so a verb
        many objects share is not favoured for it). The columns fitted for the new functions learn the object's
        words from a handful of synthesised utterances but hardly its verbs. None where a function is known or its
        verb is not."""
        verbs = self._verb_columns()
        if not all(name in self.unseen and verb_of(name) in verbs for name in names):
            return None
        columns = [verbs[verb_of(name)] for name in names]
        return np.array([_logsumexp(log_p[c]) - math.log(len(c)) for c in columns])

    def _object_scores(self, text: str, command: str, learned: np.ndarray | None) -> np.ndarray:
        """BM25 of the `command`, plus (z-normalised) the classifier's score of each object's best function, plus
        `link_weight` for each object the mentions of `text` (the previous call's included) link to."""
        bm25 = self.index.get_scores(tokens(command))
        if learned is None:
            scores = bm25
        else:
            by_object = np.full(len(self.objects), -np.inf)
            np.maximum.at(by_object, self._label_objects, learned[self._label_columns])
            by_object[np.isinf(by_object)] = learned.min()  # objects the classifier never saw
            scores = _standardised(by_object) + _standardised(bm25)
        if self.linker is not None and self.link_weight:
            linked = [self.index_of[key] for key in self.linker.linked_objects(text) if key in self.index_of]
            scores[linked] += self.link_weight
        return scores

    def _prior(self, learned: np.ndarray, objects: list[str], functions: list[str],
               object_scores: np.ndarray) -> dict[str | None, float]:
        """log P(name) over the candidates' functions and None: the classifier's chance of no function, the fused
        object scores (BM25 and classifier, the better object ranking) times `object_sharpness` as a softmax over the
        candidate objects, and within an object the classifier's share of each of its functions (a new object's
        borrowed from the known ones' verbs: `_within_new_object`). `functions`: the objects' functions in order."""
        names: list[str | None] = [*functions, None]
        log_all = learned - _logsumexp(learned) if self.unseen else learned
        logits = np.array([learned[self._column[n]] if self._column[n] >= 0 else learned.min() for n in names])
        log_p = logits - _logsumexp(logits)
        log_none = float(log_p[-1])
        log_some = math.log1p(-min(math.exp(log_none), 1 - 1e-9))
        sharpened = object_scores * self.object_sharpness
        log_objects = sharpened - _logsumexp(sharpened)
        prior: dict[str | None, float] = {None: log_none}
        start = 0
        for key, log_object in zip(objects, log_objects, strict=True):
            borrowed = self._within_new_object(self.functions[key], log_all) if self.unseen else None
            within = log_p[start:start + len(self.functions[key])] if borrowed is None else borrowed
            within = within - _logsumexp(within)
            for name, value in zip(self.functions[key], within, strict=True):
                prior[name] = log_some + float(log_object) + float(value)
            start += len(self.functions[key])
        if self.unseen_boost and self.unseen.intersection(functions):
            boosted = np.array([prior[n] + (self.unseen_boost if n in self.unseen else 0.0) for n in functions])
            prior.update(zip(functions, (boosted - _logsumexp(boosted) + log_some).tolist(), strict=True))  # P(none) stays
        return prior

    def retrieve(self, text: str, k: int, must_include: str | None = None) -> Retrieved:
        """Top-k objects; `must_include` (training: the gold function) replaces the last one when missed. In a
        conversation the previous call's object is added when missed, and BM25 reads the command alone."""
        context, command = self.read_context(text)
        learned = self.classifier.scores(text) if self.classifier is not None else None
        scores = self._object_scores(text, command, learned)
        objects = [self.objects[int(i)] for i in np.argsort(-scores, kind="stable")[:k]]
        if must_include is not None and object_key(must_include) not in objects:
            objects[-1] = object_key(must_include)
        if context is not None and object_key(context["name"]) in self.index_of and object_key(context["name"]) not in objects:
            objects.append(object_key(context["name"]))
        lang = language(command)
        functions = [name for key in objects for name in self.functions[key]]
        return Retrieved(
            objects=objects, scores=[float(scores[self.index_of[key]]) for key in objects], functions=functions,
            options=[f"{key} {self.labels[key, lang]}" for key in objects],
            prior=self._prior(learned, objects, functions, np.array([scores[self.index_of[key]] for key in objects]))
            if learned is not None else {},
        )


def load_classifier(path: Path) -> FunctionClassifier | None:
    """The classifier saved at `path` (a run's), if there is one."""
    return FunctionClassifier.load(path) if path.exists() else None


def fit_classifier(examples: Sequence[tuple[str, str | None]], seed: int = 0) -> FunctionClassifier:
    """From (text, function name) pairs; out-of-scope ones (None) are labelled `NO_FUNCTION`."""
    return FunctionClassifier.fit([t for t, _ in examples], [n or NO_FUNCTION for _, n in examples], seed)
