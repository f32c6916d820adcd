"""With the genuine Qwen tokenizer and ChatML template, serving feeds the model exactly the tokens it was trained on."""

from trl import SFTConfig, SFTTrainer

from tvcall.app.engine.hf_engine import TransformersEngine
from tvcall.data import prompt as P
from tvcall.data.splits import read_split
from tvcall.functions.registry import default_registry
from tvcall.functions.retrieve import Retriever
from tvcall.model.load import load_model
from tvcall.run import DEFAULT_TOP_OBJECTS
from tvcall.training.train import build_dataset

IM_START, IM_END = 151644, 151645


def test_qwen_prompt_is_chatml_and_the_answer_ends_with_im_end(qwen_tokenizer):
    example = P.training_example(qwen_tokenizer, "把音量调到20", "sound.volume.set", {"value": 20})
    prompt = P.prompt_ids(qwen_tokenizer, "把音量调到20")
    assert prompt[0] == IM_START and example["input_ids"][-1] == IM_END == qwen_tokenizer.eos_token_id
    assert qwen_tokenizer.decode(prompt).endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert example["input_ids"][: len(prompt)] == prompt and sum(example["completion_mask"]) == len(example["input_ids"]) - len(prompt)


def test_trainer_keeps_the_rendered_tokens_and_masks_the_prompt(qwen_dir, qwen_tokenizer, qwen_data, tmp_path):
    records = read_split(qwen_data, "train")[:4]
    dataset = build_dataset(qwen_tokenizer, records)
    args = SFTConfig(output_dir=str(tmp_path), completion_only_loss=True, max_length=None, use_cpu=True, report_to=[])
    trainer = SFTTrainer(model=load_model(str(qwen_dir)), args=args, train_dataset=dataset, processing_class=qwen_tokenizer)
    retriever = Retriever(default_registry())
    for row, record in zip(trainer.train_dataset, records, strict=True):
        options = retriever.retrieve(record.text, DEFAULT_TOP_OBJECTS, must_include=record.function).options  # as training lists them
        prompt = P.prompt_ids(qwen_tokenizer, record.text, options)
        assert row["input_ids"] == P.training_example(qwen_tokenizer, record.text, record.function, record.arguments, options)["input_ids"]
        labels = trainer.data_collator([row])["labels"][0].tolist()
        assert labels[: len(prompt)] == [-100] * len(prompt) and -100 not in labels[len(prompt):]


def test_serving_feeds_the_training_tokens_token_for_token(qwen_dir, qwen_tokenizer, qwen_data, registry):
    """Every token the constrained decoder runs through the model is the training sequence of the call it decodes."""
    model = load_model(str(qwen_dir))
    fed: list[int] = []

    def record(module, args, kwargs):
        fed.extend(kwargs["input_ids"][0].tolist())

    model.register_forward_pre_hook(record, with_kwargs=True)
    engine = TransformersEngine(model, qwen_tokenizer, registry, backend="hf")
    for record_ in read_split(qwen_data, "test"):
        fed.clear()
        result = engine.route(record_.text)
        assert result.valid, result.errors
        options = engine.retriever.retrieve(record_.text, engine.top_objects).options
        trained = P.training_example(qwen_tokenizer, record_.text, result.name, result.arguments, options)
        prompt_len = trained["completion_mask"].index(1)
        assert len(fed) > prompt_len and fed == trained["input_ids"][: len(fed)]
        assert fed[:prompt_len] == P.prompt_ids(qwen_tokenizer, record_.text, options)


def test_a_model_trained_without_options_is_served_the_bare_command_over_the_retrieved_names(
        qwen_dir, qwen_tokenizer, qwen_data, registry):
    """prompt_options false: training renders the command alone, and serving feeds exactly that prompt while the
    retrieved candidates still bound the names the decoder may produce."""
    record_ = read_split(qwen_data, "test")[0]
    assert build_dataset(qwen_tokenizer, [record_], top_objects=0)[0]["input_ids"] == P.training_example(
        qwen_tokenizer, record_.text, record_.function, record_.arguments)["input_ids"]
    model = load_model(str(qwen_dir))
    fed: list[int] = []
    model.register_forward_pre_hook(lambda module, args, kwargs: fed.extend(kwargs["input_ids"][0].tolist()), with_kwargs=True)
    engine = TransformersEngine(model, qwen_tokenizer, registry, backend="hf", prompt_options=False)
    result = engine.route(record_.text)
    trained = P.training_example(qwen_tokenizer, record_.text, result.name, result.arguments)
    assert len(fed) > len(P.prompt_ids(qwen_tokenizer, record_.text)) and fed == trained["input_ids"][: len(fed)]
    assert result.name is None or result.name in engine.retriever.retrieve(record_.text, engine.top_objects).functions
