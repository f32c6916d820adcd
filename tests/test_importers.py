import json
from collections import Counter
from pathlib import Path

import pytest

import tvcall.functions.registry as registry_module
from tvcall.data.importers import import_dataset, load_benchmark_registry, read_splits
from tvcall.data.importers.convert import convert, label_of, snake, stratified_split
from tvcall.data.importers.readers import read_bio, read_chat, read_conll, read_smp2019, tag_chunks
from tvcall.data.record import read_jsonl
from tvcall.errors import InputError

BENCHMARKS = Path(__file__).parents[2] / "shared" / "benchmarks"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_bio(folder: Path, rows: list[tuple[str, str, str]]) -> Path:
    for name, column in (("seq.in", 0), ("seq.out", 1), ("label", 2)):
        write(folder / name, "".join(row[column] + "\n" for row in rows))
    return folder


def project_registry(data_dir: Path) -> registry_module.Registry:
    """The written catalog as the pipeline loads it: `load_registry` with the import's lexicon folder."""
    registry = registry_module.registry_for_data(data_dir)
    assert registry is not registry_module.default_registry()
    return registry


TOY_TRAIN = [
    ("add sabrina salerno to the grime playlist", "O B-artist I-artist O O B-playlist O", "AddToPlaylist"),
    ("flights from boston to denver or dallas", "O O B-fromloc.city_name O B-toloc.city_name O B-toloc.city_name", "toy_flight"),
    ("fare from boston to denver", "O O B-fromloc.city_name O B-toloc.city_name", "toy_flight#toy_airfare"),
    ("play music", "O O", "PlayMusic"),
]
TOY_TEST = [
    ("add miles to my chill playlist", "O B-artist O O B-playlist I-playlist", "AddToPlaylist"),
    ("what day is it in boston", "O O O O O B-city_name", "toy_day_name"),
]


@pytest.fixture
def toy_bio(tmp_path: Path) -> Path:
    root = tmp_path / "toy"
    write_bio(root / "train", TOY_TRAIN)
    write_bio(root / "valid", TOY_TEST[:1])
    write_bio(root / "test", TOY_TEST)
    return root


def test_tag_chunks_close_on_e_and_s_and_start_on_a_stray_i() -> None:
    tags = ["S-a", "B-b", "E-b", "I-b", "O", "I-c", "E-c", "B-d", "I-e"]
    assert tag_chunks(tags) == [("a", 0, 1), ("b", 1, 3), ("b", 3, 4), ("c", 5, 7), ("d", 7, 8), ("e", 8, 9)]


def test_snake_names() -> None:
    assert [snake(x) for x in ("PlayMusic", "timeRange", "CLOSEPRICE_QUERY", "fromloc.city_name")] == [
        "play_music", "time_range", "closeprice_query", "fromloc_city_name"]


def test_bio_spans_cover_exactly_the_slot_words(toy_bio: Path) -> None:
    examples = read_bio(toy_bio / "train")
    first = examples[0]
    assert first.text == TOY_TRAIN[0][0]
    assert [(slot, first.text[a:b]) for slot, a, b in first.spans] == [("artist", "sabrina salerno"), ("playlist", "grime")]
    assert first.arguments == {"artist": "sabrina salerno", "playlist": "grime"}
    assert (first.path, first.line) == (toy_bio / "train" / "seq.in", 1)


def test_repeated_slot_keeps_the_first_as_argument_and_every_span(toy_bio: Path) -> None:
    record = convert({s: read_bio(toy_bio / f) for s, f in (("train", "train"), ("dev", "valid"), ("test", "test"))}, "toy", "en").records["train"][1]
    assert record.arguments == {"fromloc_city_name": "boston", "toloc_city_name": "denver"}
    assert [(s.slot, record.text[s.start:s.end]) for s in record.spans] == [
        ("fromloc_city_name", "boston"), ("toloc_city_name", "denver"), ("toloc_city_name", "dallas")]


def test_bio_import_names_functions_maps_unseen_to_unk_and_builds_the_registry(toy_bio: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    manifest = json.loads(import_dataset("bio", toy_bio, out).read_text())
    train = list(read_jsonl(out / "train.jsonl"))
    assert [r.function for r in train] == ["toy.intent.add_to_playlist", "toy.intent.flight", "toy.intent.flight_and_airfare", "toy.intent.play_music"]
    test = list(read_jsonl(out / "test.jsonl"))
    assert test[1].function == "toy.unseen.intent" == manifest["unknown_function"]
    assert test[1].arguments == {"city_name": "boston"}  # the slots still count for slot F1
    assert manifest["unseen"] == {"test": {"toy_day_name": 1}}
    assert manifest["labels"]["toy.intent.flight_and_airfare"] == "toy_flight#toy_airfare"
    assert manifest["files"]["train"]["repeated_slot"] == 1

    registry = load_benchmark_registry(out)
    assert "toy.unseen.intent" not in registry
    assert list(registry[("toy.intent.flight")].properties) == ["fromloc_city_name", "toloc_city_name"]
    assert registry["toy.intent.play_music"].properties == {}
    spec = registry["toy.intent.add_to_playlist"]
    assert spec.properties["artist"]["type"] == "string" and spec.required == []
    assert spec.description.en[0] == "add to playlist (toy intent AddToPlaylist)"
    assert spec.templates is not None and spec.templates.en[0] == "add {artist} to the {playlist} playlist"
    assert spec.openai_tool()["function"]["parameters"]["properties"]["artist"] == {"type": "string", "description": "slot artist"}
    project = project_registry(out)
    assert project.names == registry.names
    assert all(project[n].parameters == registry[n].parameters for n in project.names)


def test_conll_bioes_characters_and_a_literal_space_token(tmp_path: Path) -> None:
    lines = ["来 O", "张 B-singer_name", "信 I-singer_name", "哲 E-singer_name", "的 O", "歌 O", "",
             "周 B-singer", "杰 I-singer", "伦 E-singer", "  O", "夜 B-song", "曲 E-song", "",
             "放 O", "歌 S-kind", ""]
    data = write(tmp_path / "ch.test", "\n".join(lines) + "\n")
    intents = write(tmp_path / "ch.test.intent", "PlayMusic\nPlayMusic\nSing\n")
    first, second, third = read_conll(data, intents)
    assert first.text == "来张信哲的歌" and first.arguments == {"singer_name": "张信哲"}
    assert second.text == "周杰伦 夜曲" and second.line == 8
    assert [(s, second.text[a:b]) for s, a, b in second.spans] == [("singer", "周杰伦"), ("song", "夜曲")]
    assert third.spans == (("kind", 1, 2),) and third.intent == "Sing"


def test_conll_import_from_split_folders(tmp_path: Path) -> None:
    for split in ("train", "valid", "test"):
        write(tmp_path / "set" / split / f"ch.{split}", "播 O\n放 O\n周 B-s\n深 E-s\n\n")
        write(tmp_path / "set" / split / f"ch.{split}.intent", "PlayMusic\n")
    out = tmp_path / "out"
    manifest = json.loads(import_dataset("conll", tmp_path / "set", out, name="cais").read_text())
    assert manifest["import"]["lang"] == "zh" and manifest["registry"] == 1
    (record,) = read_jsonl(out / "dev.jsonl")
    assert (record.text, record.function, record.arguments) == ("播放周深", "cais.intent.play_music", {"s": "周深"})


def smp_items(counts: dict[tuple[str, str], int]) -> list[dict[str, object]]:
    items: list[dict[str, object]] = []
    for (domain, intent), count in counts.items():
        items += [{"text": f"打开应用{i}号{domain}", "domain": domain, "intent": intent, "slots": {"name": f"应用{i}号"}} for i in range(count)]
    return items


def test_smp2019_split_is_deterministic_and_stratified(tmp_path: Path) -> None:
    counts = {("app", "LAUNCH"): 20, ("weather", "QUERY"): 10, ("app", "QUERY"): 5, ("datetime", "VIEW"): 1}
    path = write(tmp_path / "train.json", json.dumps(smp_items(counts), ensure_ascii=False, indent=2))
    examples = read_smp2019(path)
    assert examples[1].line == 10 and examples[1].group == "app"
    split = stratified_split(examples, seed=0)
    assert split == stratified_split(read_smp2019(path), seed=0)
    assert split != stratified_split(examples, seed=1)
    per_label = {s: Counter(label_of(e) for e in es) for s, es in split.items()}
    assert per_label["test"] == {"app/LAUNCH": 4, "weather/QUERY": 2, "app/QUERY": 1}
    assert per_label["dev"] == {"app/LAUNCH": 2, "weather/QUERY": 1, "app/QUERY": 1}
    assert per_label["train"]["datetime/VIEW"] == 1
    for records in split.values():
        assert [e.line for e in records] == sorted(e.line for e in records)  # file order kept
    converted = convert(split, "smp2019", "zh")
    assert not converted.unseen
    assert {r.function for r in converted.records["test"]} <= set(converted.labels)
    assert "smp2019.app.launch" in converted.labels


def test_smp2019_nested_value_keeps_both_spans(tmp_path: Path) -> None:
    item = {"text": "导航到佛山大良汽车站", "domain": "map", "intent": "ROUTE", "slots": {"endLoc_city": "佛山", "endLoc_poi": "佛山大良汽车站"}}
    (example,) = read_smp2019(write(tmp_path / "train.json", json.dumps([item], ensure_ascii=False)))
    assert example.spans == (("endLoc_city", 3, 5), ("endLoc_poi", 3, 10))


def chat_line(text: str, name: str | None = None, arguments: object = None) -> str:
    reply: dict[str, object] = {"role": "assistant", "content": None}
    if name:
        args = arguments if isinstance(arguments, str) else json.dumps(arguments or {}, ensure_ascii=False)
        reply["tool_calls"] = [{"id": "c1", "type": "function", "function": {"name": name, "arguments": args}}]
    return json.dumps({"messages": [{"role": "system", "content": "route"}, {"role": "user", "content": text}, reply]}, ensure_ascii=False)


def test_chat_jsonl_spans_substring_arguments_and_types_the_rest(tmp_path: Path) -> None:
    rows = [chat_line("play Yesterday by the Beatles", "play_song", {"title": "Yesterday", "artist": "the Beatles"}),
            chat_line("volume to 30", "picture.volume.set", {"value": 30}),
            chat_line("volume to 40", "picture.volume.set", {"value": 40}),
            chat_line("turn subtitles on", "set_subtitles", {"state": "on", "enabled": True}),
            chat_line("what is the meaning of life")]
    path = write(tmp_path / "train.jsonl", "\n".join(rows) + "\n")
    examples = read_chat(path)
    assert [(s, examples[0].text[a:b]) for s, a, b in examples[0].spans] == [("title", "Yesterday"), ("artist", "the Beatles")]
    assert examples[4].intent is None and examples[4].arguments == {}
    assert examples[3].spans == (("state", 15, 17),)
    for split in ("dev", "test"):
        write(tmp_path / f"{split}.jsonl", rows[0] + "\n")
    out = tmp_path / "out"
    import_dataset("chat", tmp_path, out, name="chat")
    registry = load_benchmark_registry(out)
    assert registry.names == ["chat.intent.play_song", "chat.intent.set_subtitles", "picture.volume.set"]
    assert registry["picture.volume.set"].properties["value"] == {"type": "integer", "minimum": 30, "maximum": 40, "description": "slot value"}
    assert registry["chat.intent.set_subtitles"].properties["enabled"]["type"] == "boolean"
    assert [r.function for r in read_jsonl(out / "train.jsonl")][-1] is None
    assert [r.lang for r in read_jsonl(out / "train.jsonl")] == ["en"] * 5


def test_chat_single_file_is_split_and_its_registry_loads_in_the_project(tmp_path: Path) -> None:
    rows = [chat_line(f"播放第{i}集", "media.episode.play", {"episode": f"第{i}集"}) for i in range(10)]
    path = write(tmp_path / "calls.jsonl", "\n".join(rows) + "\n")
    manifest = json.loads(import_dataset("chat", path, tmp_path / "out", name="chat").read_text())
    assert {s: f["records"] for s, f in manifest["files"].items()} == {"train": 7, "dev": 1, "test": 2}
    assert manifest["catalog"] == ["catalog/media.yaml"]
    assert project_registry(tmp_path / "out").names == ["media.episode.play"]


def assert_input_error(error: pytest.ExceptionInfo[InputError], path: Path, line: int | None, field: str) -> None:
    assert (error.value.path, error.value.line, error.value.field) == (str(path), line, field)
    assert str(path) in str(error.value)


def test_misaligned_bio_files_name_the_short_file(tmp_path: Path) -> None:
    write_bio(tmp_path, TOY_TRAIN)
    write(tmp_path / "seq.out", "".join(row[1] + "\n" for row in TOY_TRAIN[:3]))
    with pytest.raises(InputError) as error:
        read_bio(tmp_path)
    assert_input_error(error, tmp_path / "seq.out", 4, "line")


def test_bio_tag_count_mismatch_names_line_and_field(tmp_path: Path) -> None:
    write_bio(tmp_path, [TOY_TRAIN[0], ("play music", "O", "PlayMusic")])
    with pytest.raises(InputError) as error:
        read_bio(tmp_path)
    assert_input_error(error, tmp_path / "seq.out", 2, "tags")


def test_bad_tag_names_its_position(tmp_path: Path) -> None:
    write_bio(tmp_path, [("play music", "O X-genre", "PlayMusic")])
    with pytest.raises(InputError) as error:
        read_bio(tmp_path)
    assert_input_error(error, tmp_path / "seq.out", 1, "tags[1]")


def test_conll_tag_without_a_token(tmp_path: Path) -> None:
    data = write(tmp_path / "ch.train", "来 O\nB-singer\n\n")
    intents = write(tmp_path / "ch.train.intent", "PlayMusic\n")
    with pytest.raises(InputError) as error:
        read_conll(data, intents)
    assert_input_error(error, data, 2, "token")


def test_conll_intent_count_mismatch(tmp_path: Path) -> None:
    data = write(tmp_path / "ch.train", "来 O\n\n去 O\n")
    intents = write(tmp_path / "ch.train.intent", "Chat\n")
    with pytest.raises(InputError) as error:
        read_conll(data, intents)
    assert_input_error(error, intents, 2, "intent")


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    smp = write(tmp_path / "train.json", '[\n {"text": "开微信", "domain": "app",\n  "intent": LAUNCH}\n]\n')
    with pytest.raises(InputError) as error:
        read_smp2019(smp)
    assert_input_error(error, smp, 3, "json")
    chat = write(tmp_path / "calls.jsonl", chat_line("hi") + "\n{not json\n")
    with pytest.raises(InputError) as error:
        read_chat(chat)
    assert_input_error(error, chat, 2, "json")


def test_smp2019_value_outside_the_text(tmp_path: Path) -> None:
    items = [{"text": "开微信", "domain": "app", "intent": "LAUNCH", "slots": {"name": "微信"}},
             {"text": "开qq", "domain": "app", "intent": "LAUNCH", "slots": {"name": "微信"}}]
    path = write(tmp_path / "train.json", json.dumps(items, ensure_ascii=False, indent=1))
    with pytest.raises(InputError) as error:
        read_smp2019(path)
    assert_input_error(error, path, 10, "slots.name")


def test_chat_arguments_that_are_not_json(tmp_path: Path) -> None:
    path = write(tmp_path / "calls.jsonl", chat_line("play it", "play", "{title: it}") + "\n")
    with pytest.raises(InputError) as error:
        read_chat(path)
    assert_input_error(error, path, 1, "messages[2].tool_calls[0].function.arguments")


def test_two_labels_with_one_name_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "set"
    for split in ("train", "dev", "test"):
        write_bio(root / split, [("play", "O", "PlayMusic"), ("play", "O", "play_music")])
    with pytest.raises(InputError) as error:
        import_dataset("bio", root, tmp_path / "out")
    assert_input_error(error, root / "train" / "seq.in", 2, "intent")


def real(name: str) -> Path:
    path = BENCHMARKS / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def test_real_snips() -> None:
    splits = read_splits("bio", real("snips"), "en", 0)
    assert {s: len(e) for s, e in splits.items()} == {"train": 13084, "dev": 700, "test": 700}
    converted = convert(splits, "snips", "en")
    assert len({r.function for r in converted.records["test"]}) == 7 and not converted.unseen
    assert len(converted.slots) == 39
    record = converted.records["train"][0]
    assert all(record.text[s.start:s.end] == record.arguments[s.slot] for s in record.spans)


def test_real_atis(tmp_path: Path) -> None:
    manifest = json.loads(import_dataset("bio", real("atis"), tmp_path).read_text())
    assert {s: f["records"] for s, f in manifest["files"].items()} == {"train": 4478, "dev": 500, "test": 893}
    assert manifest["unseen"]["test"] == {"atis_day_name": 2, "atis_airfare#atis_flight": 1, "atis_flight#atis_airline": 1, "atis_flight_no#atis_airline": 1}
    assert manifest["registry"] == 21 == len(project_registry(tmp_path))
    assert "atis.intent.flight_and_airfare" in manifest["labels"]


def test_real_cais() -> None:
    splits = read_splits("conll", real("cais"), "zh", 0)
    assert {s: len(e) for s, e in splits.items()} == {"train": 7995, "dev": 994, "test": 1012}
    assert len({e.intent for e in splits["test"]}) == 14
    converted = convert(splits, "cais", "zh")
    assert converted.unseen == {"test": {"GetDate": 1}} and len(converted.labels) == 13
    spaced = [r for r in converted.records["train"] if " " in r.text]  # the literal space tokens
    assert len(spaced) > 50
    assert all(r.text[s.start:s.end] == r.arguments[s.slot] for r in spaced for s in r.spans[:1])


def test_real_smp2019(tmp_path: Path) -> None:
    manifest = json.loads(import_dataset("smp2019", real("smp2019_ecdt_task1"), tmp_path, name="smp2019").read_text())
    assert sum(f["records"] for f in manifest["files"].values()) == 2579
    assert manifest["registry"] == 48 and not manifest["unseen"]
    assert manifest == json.loads(import_dataset("smp2019", real("smp2019_ecdt_task1"), tmp_path / "again", name="smp2019").read_text())


def test_benchmark_parameters_follow_the_order_utterances_say_them(tmp_path: Path) -> None:
    """The decoder offers keys in schema order: the catalog puts the slot said first first, not the alphabet's."""
    rows = [("flights from zurich at noon", "O O B-zcity O B-atime", "flight"),
            ("from geneva after ten", "O B-zcity O B-atime", "flight"),
            ("at nine", "O B-atime", "flight")]
    for split in ("train", "valid", "test"):
        write_bio(tmp_path / "set" / split, rows)
    import_dataset("bio", tmp_path / "set", tmp_path / "out", name="toy")
    assert list(load_benchmark_registry(tmp_path / "out")["toy.intent.flight"].properties) == ["zcity", "atime"]
