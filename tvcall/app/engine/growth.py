"""A registry grown past the run: how far the new functions' names are raised in the name prior
(`Retriever.unseen_boost`) against the model's preference for the names it was trained on. Chosen by routing, names
only, the synthesised utterances the classifier's fit held back (`tvcall.training.refresh`) and the run's dev split:
the boost with the best held-back accuracy among those that cost the dev split at most `MAX_DEV_DROP` (the functions
the run knows must not pay for the new ones), the smaller on a tie. Only utterances with a new function among their
candidates can change with the boost, and only they are routed."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tvcall.data.splits import read_split
from tvcall.functions.retrieve import Retriever
from tvcall.run import RunDir
from tvcall.training.refresh import Refresh, grown_utterances, held_back, save_unseen_boost

BOOSTS = (0.0, 2.0, 4.0)
MAX_HELD_BACK = 150  # held-back utterances routed per boost (the refresh stays within its two minutes)
MAX_DEV_DROP = 0.01

RouteNames = Callable[[list[str]], list[str | None]]


def _correct(route_names: RouteNames, retriever: Retriever, top_objects: int, texts: Sequence[str],
             gold: Sequence[str | None], boosts: Sequence[float]) -> dict[float, int]:
    """Per boost, how many of the texts with a new function among their candidates are routed right: only those can
    change with the boost (for a held-back utterance the others are wrong at every boost), so only they are routed."""
    affected = [i for i, text in enumerate(texts) if retriever.unseen.intersection(retriever.retrieve(text, top_objects).functions)]
    correct = {}
    for boost in boosts:
        retriever.unseen_boost = boost
        names = route_names([texts[i] for i in affected])
        correct[boost] = sum(name == gold[i] for i, name in zip(affected, names, strict=True))
    return correct


def choose_unseen_boost(route_names: RouteNames, retriever: Retriever, top_objects: int, run: RunDir,
                        refreshed: Refresh, log: Callable[[str], None] = lambda _: None) -> float:
    """Choose, set on `retriever` and keep beside the grown classifier the boost of the new functions' names."""
    assert refreshed.path is not None
    retriever.unseen = frozenset(refreshed.new_functions)
    new = (refreshed.unfitted or held_back(grown_utterances(run, retriever.registry, refreshed.new_functions)[1]))[:MAX_HELD_BACK]
    refreshed.unfitted = []  # not kept for the life of a server
    data_dir = run.data_dir_at_hand()
    dev = read_split(data_dir, "dev") if data_dir is not None and (data_dir / "dev.jsonl").exists() else []
    log(f"choosing the new names' boost on {len(new)} held-back utterances and {len(dev)} dev utterances")
    on_new = {b: c / max(1, len(new)) for b, c in
              _correct(route_names, retriever, top_objects, [r.text for r in new], [r.function for r in new], BOOSTS).items()}
    on_dev = _correct(route_names, retriever, top_objects, [r.text for r in dev], [r.function for r in dev], BOOSTS)
    dev_change = {b: (on_dev[b] - on_dev[0.0]) / max(1, len(dev)) for b in BOOSTS}
    allowed = [b for b in BOOSTS if dev_change[b] >= -MAX_DEV_DROP]
    best = max(allowed, key=lambda b: (on_new[b], -b))
    retriever.unseen_boost = refreshed.unseen_boost = best
    save_unseen_boost(refreshed.path, best, {str(b): {"held_back": on_new[b], "dev_change": dev_change[b]} for b in BOOSTS})
    log(f"new names' boost {best:g}: held-back accuracy {on_new[best]:.3f} (no boost {on_new[0.0]:.3f}), "
        f"dev accuracy {dev_change[best]:+.3f} against no boost")
    return best
