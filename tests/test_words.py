"""Word boundaries for copied slot values: no span cuts through an English word, a number or a Chinese word."""

from tvcall.app.engine.plan import free_occurrence, utterance_spans
from tvcall.data.words import word_boundaries


def test_a_chinese_span_never_cuts_through_a_dictionary_word():
    spans = utterance_spans("我想去加拿大正好")
    assert "加拿大" in spans and "拿大正" not in spans and "拿大" not in spans
    spans = utterance_spans("去迪士尼世界玩")
    assert "迪士尼世界" in spans and "尼世界" not in spans


def test_a_name_the_dictionary_lacks_splits_into_characters_and_stays_copyable():
    assert "庆余年" in utterance_spans("打开爱奇艺看庆余年")  # no guessed word 看庆 swallows its first character
    assert "依然范特西" in utterance_spans("播放唱片依然范特西")


def test_english_words_numbers_and_mixed_text_keep_their_boundaries():
    text = "switch to HDMI2 and 音量20"
    bounds = word_boundaries(text)
    assert {0, len(text)} <= bounds and text.index("HDMI2") in bounds and text.index("DMI2") not in bounds
    assert "HDMI2" in utterance_spans(text) and "DMI" not in utterance_spans(text) and "20" in utterance_spans(text)


def test_a_value_is_placed_where_it_stands_as_a_word():
    text = "迪士尼乐园和士尼"  # 士尼 first occurs inside 迪士尼, then stands on its own at the end
    assert free_occurrence(text, "士尼", []) == (6, 8)


def test_the_sub_words_of_a_long_word_stay_copyable():
    assert "流行" in utterance_spans("播放中文流行音乐") and "摇滚" in utterance_spans("我想听摇滚歌曲")
    assert "过火" in utterance_spans("放过火")  # a two-character word (放过) is never closed
