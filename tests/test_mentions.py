"""Entity linking: lexicon values an utterance mentions, and the registry objects that take them."""

from tvcall.app.engine.plan import argument_plan, copy_values, utterance_spans
from tvcall.data.lexicon import lexicon_values
from tvcall.data.mentions import LexiconLinker
from tvcall.data.words import word_boundaries
from tvcall.functions.retrieve import Retriever


def test_a_catalogue_title_links_to_the_media_object_that_takes_it(registry):
    linker = LexiconLinker(registry)
    assert "media.movie" in linker.linked_objects("霸王别姬的导演是谁?")
    assert "media.documentary" not in linker.linked_objects("霸王别姬的导演是谁?")
    assert "media.movie" in linker.linked_objects("who directed farewell my concubine")  # in any case


def test_the_longest_mention_wins_and_none_cuts_through_a_word(registry):
    linker = LexiconLinker(registry)
    text = "我想看霸王别姬"
    mentions = linker.mentions(text)
    assert [text[m.start:m.end] for m in mentions] == ["霸王别姬"]
    assert linker.mentions("the avatarist") == []  # "Avatar" inside another word is no mention


def test_a_train_only_catalogue_lacks_the_held_out_titles(registry):
    held_out = lexicon_values("movie_title", "zh", "test")[0]
    assert "media.movie" in LexiconLinker(registry).linked_objects(f"{held_out}的导演是谁")
    assert "media.movie" not in LexiconLinker(registry, catalogue="train").linked_objects(f"{held_out}的导演是谁")


def test_a_linked_object_is_raised_in_the_retrievers_ranking_by_the_link_weight(registry):
    retriever = Retriever(registry)
    retriever.linker = LexiconLinker(registry)
    text = "霸王别姬的导演是谁"
    every = len(retriever.objects)
    plain = retriever.retrieve(text, every)
    retriever.link_weight = 100.0
    linked = retriever.retrieve(text, every)
    assert linked.objects[0] == "media.movie"
    assert linked.scores[0] == plain.scores[plain.objects.index("media.movie")] + 100.0


def test_a_title_the_catalogue_knows_is_copied_whole_or_not_at_all(registry):
    linker = LexiconLinker(registry)
    text = "请问知否知否应是绿肥红瘦的原著小说"
    plain = utterance_spans(text)
    assert "知否知否应" in plain  # the segmenter alone opens 应|是 inside the title
    known = utterance_spans(text, bounds=linker.word_boundaries(text))
    assert "知否知否应是绿肥红瘦" in known and "知否知否应" not in known and "知否" not in known
    assert "原著小说" in known  # words outside the title are as before
    spec = registry["media.tv_series.query_original_novel"]
    assert "知否知否应" not in copy_values(argument_plan(spec, text, linker.word_boundaries), "title")


def test_a_title_the_catalogue_lacks_keeps_the_segmenters_boundaries(registry):
    text = "请问知否知否应是绿肥红瘦的原著小说"
    assert LexiconLinker(registry, catalogue="train").word_boundaries(text) == word_boundaries(text)
