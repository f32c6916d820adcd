"""Retrieval's parts: the sparse BM25 index and the stored classifier."""

import joblib
import numpy as np
import pytest
from rank_bm25 import BM25Okapi
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import SGDClassifier

from tvcall.functions.retrieve import FunctionClassifier, SparseBM25, fit_classifier, tokens

EXAMPLES = [("turn it up", "sound.volume.increase"), ("turn it down", "sound.volume.decrease"),
            ("what is the weather", "info.weather.get_forecast"), ("write me a poem", "<none>")] * 3


def test_sparse_bm25_scores_as_rank_bm25_does(registry):
    documents = [tokens(" ".join([spec.name.replace(".", " "), *spec.description.zh, *spec.description.en]))
                 for spec in list(registry.functions.values())[:300]]
    sparse, okapi = SparseBM25(documents), BM25Okapi(documents)
    for query in ["把音量调到20", "turn up the volume volume", "霸王别姬的导演是谁", "zzz unknown words", ""]:
        assert sparse.get_scores(tokens(query)) == pytest.approx(okapi.get_scores(tokens(query)), abs=1e-9)


def test_the_classifier_keeps_float16_weights_and_scores_as_sklearn_does(tmp_path):
    """Half-precision weights: scores within float16 rounding of sklearn's, the same best label."""
    classifier = fit_classifier(EXAMPLES)
    classifier.save(tmp_path / "classifier.joblib")
    loaded = FunctionClassifier.load(tmp_path / "classifier.joblib")
    assert loaded.labels == classifier.labels and loaded._weights.dtype == np.float16
    assert loaded._weights.flags.c_contiguous
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True, lowercase=True)
    features = vectorizer.fit_transform([t for t, _ in EXAMPLES])
    model = SGDClassifier(loss="log_loss", alpha=1e-5, max_iter=8, tol=None, random_state=0, n_jobs=2)
    model.fit(features, [label for _, label in EXAMPLES])
    for text in ["turn it up please", "weather today", "zzz"]:
        expected = model.decision_function(vectorizer.transform([text]))[0]
        assert loaded.scores(text) == pytest.approx(expected, rel=2e-3, abs=2e-3)
        assert int(np.argmax(loaded.scores(text))) == int(np.argmax(expected))


def test_a_classifier_saved_by_earlier_runs_still_loads(tmp_path):
    """Runs trained before kept (vectorizer, sklearn model); they load into the same float16 form."""
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3))
    labels = [label for _, label in EXAMPLES]
    model = SGDClassifier(loss="log_loss", random_state=0).fit(vectorizer.fit_transform([t for t, _ in EXAMPLES]), labels)
    joblib.dump((vectorizer, model), tmp_path / "old.joblib")
    old = FunctionClassifier.load(tmp_path / "old.joblib")
    assert old.labels == [str(c) for c in model.classes_] and old._weights.dtype == np.float16
    expected = model.decision_function(vectorizer.transform(["turn it up"]))[0]
    assert old.scores("turn it up") == pytest.approx(expected, rel=2e-3, abs=2e-3)
