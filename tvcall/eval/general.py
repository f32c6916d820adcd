"""Does fine-tuning damage the base model's general behaviour? A fixed set of plain questions that no TV function
answers, put to the base model and to the fine-tuned one (the same weights, LoRA adapter off and on), the
answers scored against reference answers: keyword accuracy (the answer names the fact), BLEU (sacrebleu) and
ROUGE-L (rouge-score), both over characters for Chinese and words for English; and how often the router abstains
on them, since a TV hands a question no function applies to its chat model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sacrebleu
import torch
from rouge_score import rouge_scorer

from tvcall.data.record import write_atomic

MAX_NEW_TOKENS = 40


@dataclass(frozen=True)
class GeneralPrompt:
    text: str
    reference: str
    keywords: tuple[str, ...]  # any of them in the answer (case-insensitive) counts it right


GENERAL_PROMPTS: tuple[GeneralPrompt, ...] = (
    GeneralPrompt("What is the capital of France?", "The capital of France is Paris.", ("paris",)),
    GeneralPrompt("How many days are there in a week?", "There are seven days in a week.", ("seven", "7")),
    GeneralPrompt("What color is the sky on a clear day?", "The sky is blue on a clear day.", ("blue",)),
    GeneralPrompt("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system.", ("jupiter",)),
    GeneralPrompt("What do bees make?", "Bees make honey.", ("honey",)),
    GeneralPrompt("What is the boiling point of water in Celsius?", "Water boils at 100 degrees Celsius.", ("100",)),
    GeneralPrompt("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet.", ("shakespeare",)),
    GeneralPrompt("What is the opposite of hot?", "The opposite of hot is cold.", ("cold",)),
    GeneralPrompt("What gas do plants absorb from the air?", "Plants absorb carbon dioxide from the air.", ("carbon dioxide", "co2")),
    GeneralPrompt("How many legs does a spider have?", "A spider has eight legs.", ("eight", "8")),
    GeneralPrompt("中国的首都是哪里？", "中国的首都是北京。", ("北京", "beijing")),
    GeneralPrompt("一年有几个月？", "一年有十二个月。", ("十二", "12")),
    GeneralPrompt("太阳从哪个方向升起？", "太阳从东方升起。", ("东", "east")),
    GeneralPrompt("水的化学式是什么？", "水的化学式是H2O。", ("h2o",)),
)


class _CharsAndWords:
    """ROUGE tokens: each CJK character alone, other runs of letters and digits as lower-cased words (rouge-score's
    own tokenizer drops every non-ASCII character, so Chinese would score nothing)."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"[\u4e00-\u9fff]|[A-Za-z0-9]+", text.lower())


def keyword_hit(answer: str, keywords: tuple[str, ...]) -> bool:
    return any(k.lower() in answer.lower() for k in keywords)


def text_scores(answers: list[str], prompts: tuple[GeneralPrompt, ...]) -> dict[str, float]:
    """Keyword accuracy, corpus BLEU (sacrebleu's zh tokenisation: Chinese characters split, 13a for the rest) and
    mean ROUGE-L F1, all in 0..1."""
    references = [p.reference for p in prompts]
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_CharsAndWords())
    rouge = [scorer.score(ref, ans)["rougeL"].fmeasure for ref, ans in zip(references, answers, strict=True)]
    return {
        "keyword_accuracy": sum(keyword_hit(a, p.keywords) for a, p in zip(answers, prompts, strict=True)) / len(prompts),
        "bleu": sacrebleu.corpus_bleu(answers, [references], tokenize="zh").score / 100,
        "rouge_l": sum(rouge) / len(rouge),
    }


@torch.inference_mode()
def answer(model: Any, tokenizer: Any, text: str, max_new_tokens: int = MAX_NEW_TOKENS) -> str:
    """The model's greedy chat answer (its own chat template and default system prompt)."""
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def before_and_after(model: Any, tokenizer: Any, prompts: tuple[GeneralPrompt, ...] = GENERAL_PROMPTS) -> dict[str, Any]:
    """`model`: a peft model; "before" answers with its adapter disabled (the base model), "after" with it on."""
    with model.disable_adapter():
        before = [answer(model, tokenizer, p.text) for p in prompts]
    after = [answer(model, tokenizer, p.text) for p in prompts]
    return {
        "prompts": len(prompts), "before": text_scores(before, prompts), "after": text_scores(after, prompts),
        "answers": [{"prompt": p.text, "reference": p.reference, "before": b, "after": a}
                    for p, b, a in zip(prompts, before, after, strict=True)],
    }


def general_check(run_dir: Path, router: Any | None = None) -> Path:
    """Score the run's model before and after its adapter on `GENERAL_PROMPTS`; with `router` (an Engine), also
    how often it abstains on them. Writes RUN/eval-general/general.json and general.md; returns the JSON's path."""
    from peft import PeftModel

    from tvcall.model.load import load_model, load_tokenizer
    from tvcall.run import RunDir

    run = RunDir(run_dir)
    run_dir = run.path
    if not run.has_adapter:
        raise FileNotFoundError(f"{run.adapter_dir} has no LoRA adapter: the general check compares the base model with its adapter")
    source = run.model_source()
    model = PeftModel.from_pretrained(load_model(source), run.adapter_dir).eval()
    result = before_and_after(model, load_tokenizer(source))
    if router is not None:
        result["router_abstention_rate"] = sum(router.route(p.text).name is None for p in GENERAL_PROMPTS) / len(GENERAL_PROMPTS)
    out = run_dir / "eval-general"
    out.mkdir(exist_ok=True)
    write_atomic(out / "general.json", json.dumps(result, ensure_ascii=False, indent=1) + "\n")
    write_atomic(out / "general.md", general_markdown(result))
    return out / "general.json"


def general_markdown(result: dict[str, Any]) -> str:
    lines = ["# General behaviour before and after fine-tuning", "",
             f"{result['prompts']} plain questions no TV function answers (`tvcall/eval/general.py`), greedy answers "
             f"of at most {MAX_NEW_TOKENS} tokens.", "",
             "| | keyword accuracy | BLEU | ROUGE-L |", "|---|---|---|---|"]
    for side in ("before", "after"):
        s = result[side]
        lines.append(f"| {side} | {s['keyword_accuracy']:.3f} | {s['bleu']:.3f} | {s['rouge_l']:.3f} |")
    if "router_abstention_rate" in result:
        lines += ["", f"The router abstains (no function) on {result['router_abstention_rate']:.0%} of them."]
    lines += ["", "| prompt | before | after |", "|---|---|---|"]
    lines += [f"| {a['prompt']} | {_cell(a['before'])} | {_cell(a['after'])} |" for a in result["answers"]]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
