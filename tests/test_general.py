"""The general-behaviour check: plain questions answered with the adapter off (base) and on (fine-tuned)."""

import copy

import torch
from peft import LoraConfig, get_peft_model

from tvcall.eval.general import GENERAL_PROMPTS, before_and_after, general_markdown, text_scores


def test_reference_answers_score_one_and_unrelated_answers_zero():
    perfect = text_scores([p.reference for p in GENERAL_PROMPTS], GENERAL_PROMPTS)
    assert perfect["keyword_accuracy"] == 1.0 and round(perfect["bleu"], 6) == 1.0 and perfect["rouge_l"] == 1.0
    unrelated = text_scores(["zzz"] * len(GENERAL_PROMPTS), GENERAL_PROMPTS)
    assert unrelated == {"keyword_accuracy": 0.0, "bleu": 0.0, "rouge_l": 0.0}


def test_chinese_answers_are_scored_by_character():
    prompts = tuple(p for p in GENERAL_PROMPTS if p.text.startswith("中国"))
    partial = text_scores(["首都是北京"], prompts)  # five of the reference's characters, in order
    assert partial["keyword_accuracy"] == 1.0 and 0.5 < partial["rouge_l"] < 1.0 and partial["bleu"] > 0


def test_before_is_the_base_model_and_after_the_adapter(base_model, tokenizer):
    """A fresh LoRA adapter (B = 0) changes no answer; once its weights move, the "after" answers change while
    "before" stays the base model's."""
    prompts = GENERAL_PROMPTS[:2]
    model = get_peft_model(copy.deepcopy(base_model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).eval()
    untouched = before_and_after(model, tokenizer, prompts)
    assert [a["before"] for a in untouched["answers"]] == [a["after"] for a in untouched["answers"]]
    assert untouched["answers"][0]["before"]  # the base model does answer
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    moved = before_and_after(model, tokenizer, prompts)
    assert [a["before"] for a in moved["answers"]] == [a["before"] for a in untouched["answers"]]
    assert [a["after"] for a in moved["answers"]] != [a["before"] for a in moved["answers"]]
    assert "| before |" in general_markdown(moved) and "| after |" in general_markdown(moved)
