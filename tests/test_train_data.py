"""Fine-tuning without torch: data validation, config, manifest writing, grounded data,
assistant-token masking (with a fake tokenizer) and the CLI's fast failure on bad data."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from appliance.config import load_settings
from appliance.errors import InputError
from appliance.evaluate.squad import Article, Paragraph, Question, answer_in_text
from appliance.generate.prompt import ABSTAIN_SENTENCE, build_rag_prompt
from appliance.models import Registry
from appliance.train import default_out_id
from appliance.train.config import RunOptions, TrainConfig
from appliance.train.data import (
    ISSUE_KINDS,
    check_lengths,
    split_examples,
    validate_chat_jsonl,
    write_chat_jsonl,
)
from appliance.train.errors import (
    ModelExistsError,
    TrainConfigError,
    TrainingDataError,
)
from appliance.train.grounded import GroundedOptions, SquadSources, build_grounded
from appliance.train.lora import IGNORE, ChatEncoder
from appliance.train.register import dump_manifest, register_model, remove_model
from tests.conftest import REPO, run_cli, run_main


def chat(user: str, reply: str, system: str | None = None) -> dict[str, Any]:
    msgs = [{"role": "system", "content": system}] if system else []
    return {"messages": [*msgs, {"role": "user", "content": user},
                         {"role": "assistant", "content": reply}]}


GOOD = [chat("What is 2+2?", "4", system="Be brief."), chat("Capital of France?", "Paris")]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# -- validation ------------------------------------------------------------------------------


def test_valid_file_counts(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(x) for x in GOOD] + [""])
    report = validate_chat_jsonl(path)
    assert report.ok and not report.issues
    counts = report.counts()
    assert counts["examples"] == 2 and counts["lines"] == 2 and counts["invalid"] == 0
    assert counts["system"] == 1 and counts["user"] == 2 and counts["assistant"] == 2
    assert all(counts[k] == 0 for k in ISSUE_KINDS)
    assert report.examples[1].line == 2 and report.examples[1].messages[1]["content"] == "Paris"
    assert len(report.sha256) == 64


def test_every_problem_named_by_line_and_counted(tmp_path: Path) -> None:
    lines = [
        json.dumps(GOOD[0]),                                                   # 1 ok
        '{"messages": [{"role": "user", "content": "hi"}',                     # 2 broken JSON
        json.dumps(chat("q", "a") | {"messages": [
            {"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}),  # 3 role
        json.dumps({"messages": [{"role": "assistant", "content": "a"},
                                 {"role": "user", "content": "q"}]}),           # 4 order
        json.dumps(chat("q", "   ")),                                           # 5 empty
        "",                                                                     # 6 blank
        json.dumps({"messages": [{"role": "user", "content": "q"},
                                 {"role": "assistant", "content": 5}]}),        # 7 schema
        json.dumps({"messages": [{"role": "user", "content": "a"},
                                 {"role": "system", "content": "s"},
                                 {"role": "assistant", "content": "b"}]}),      # 8 order
        json.dumps({"text": "no messages"}),                                    # 9 schema
        json.dumps([1, 2]),                                                     # 10 json
        json.dumps({"messages": [{"role": "user", "content": "q"},
                                 {"role": "assistant", "content": "a"},
                                 {"role": "user", "content": "q2"}]}),          # 11 order
    ]
    report = validate_chat_jsonl(write_lines(tmp_path / "bad.jsonl", lines))
    assert not report.ok
    by_line = {i.line: i for i in report.issues}
    assert by_line[2].kind == "json" and "broken JSON" in by_line[2].message
    assert by_line[3].kind == "role" and by_line[3].field == "messages[1].role"
    assert "'bot'" in by_line[3].message
    assert by_line[4].kind == "order" and by_line[4].field == "messages[0].role"
    assert by_line[5].kind == "empty_assistant" and by_line[5].field == "messages[1].content"
    assert by_line[7].kind == "schema" and by_line[7].field == "messages[1].content"
    assert by_line[8].kind == "order" and "system" in by_line[8].message
    assert by_line[9].kind == "schema" and by_line[9].field == "messages"
    assert by_line[10].kind == "json"
    assert by_line[11].kind == "order" and "last message" in by_line[11].message
    assert 6 not in by_line and report.blank == 1
    counts = report.counts()
    assert counts["json"] == 2 and counts["role"] == 1 and counts["order"] == 3
    assert counts["empty_assistant"] == 1 and counts["schema"] == 2
    assert counts["examples"] == 1 and counts["invalid"] == 9 and counts["lines"] == 10
    with pytest.raises(TrainingDataError) as exc:
        report.raise_if_invalid()
    assert "line 2" in exc.value.message and "9 of 10" in exc.value.message
    assert "broken JSON" in report.summary()


def test_bad_encoding_bom_and_weights(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    good = json.dumps(GOOD[1]).encode()
    weighted = json.dumps({"messages": [
        {"role": "user", "content": "example q"}, {"role": "assistant", "content": "x",
                                                   "weight": 0},
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "y"}]}).encode()
    all_zero = json.dumps({"messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "x", "weight": 0}]}).encode()
    bad_weight = json.dumps({"messages": [
        {"role": "user", "content": "q", "weight": 1},
        {"role": "assistant", "content": "x", "weight": 2}]}).encode()
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\n\xff\xfe\n" + weighted + b"\n" + all_zero
                     + b"\n" + bad_weight + b"\n")
    report = validate_chat_jsonl(path)
    assert [e.line for e in report.examples] == [1, 3]
    assert report.examples[1].messages[1]["weight"] == 0
    kinds = {(i.line, i.kind) for i in report.issues}
    assert (2, "json") in kinds and (4, "schema") in kinds and (5, "schema") in kinds
    assert {i.field for i in report.issues if i.line == 5} == {"messages[0].weight",
                                                               "messages[1].weight"}


def test_too_long_by_chars_and_by_tokens(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(chat("x" * 50, "y")),
                                              json.dumps(chat("short", "ok"))])
    report = validate_chat_jsonl(path, max_chars=40)
    assert report.counts()["too_long"] == 1 and report.issues[0].line == 1
    report = validate_chat_jsonl(path)
    check_lengths(report, lambda msgs: sum(len(m["content"]) for m in msgs), max_len=20)
    assert [e.line for e in report.examples] == [2] and report.token_lengths == [7]
    assert report.issues[0].kind == "too_long" and "--max-len 20" in report.issues[0].message
    assert report.counts()["user"] == 1 and not report.ok


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        validate_chat_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    report = validate_chat_jsonl(tmp_path / "empty.jsonl")
    with pytest.raises(TrainingDataError, match="holds no examples"):
        report.raise_if_invalid()


def test_split_is_seeded_and_keeps_one_for_validation(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(chat(f"q{i}", f"a{i}"))
                                              for i in range(10)])
    examples = validate_chat_jsonl(path).examples
    train, val = split_examples(examples, 0.2, seed=1)
    again = split_examples(examples, 0.2, seed=1)
    assert (train, val) == again and len(val) == 2 and len(train) == 8
    assert sorted(e.line for e in train + val) == list(range(1, 11))
    assert len(split_examples(examples[:3], 0.05)[1]) == 1
    assert split_examples(examples, 0.0)[1] == []
    out = tmp_path / "out.jsonl"
    assert write_chat_jsonl(train, out) == 8 and validate_chat_jsonl(out).ok


# -- config ----------------------------------------------------------------------------------


def test_config_validates_and_round_trips(tmp_path: Path) -> None:
    cfg = TrainConfig(r=4, lora_alpha=8, epochs=1, quant="q4_k_m")
    assert cfg.scaling == 2.0
    assert cfg.peft_kwargs()["r"] == 4 and cfg.peft_kwargs()["task_type"] == "CAUSAL_LM"
    cfg.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == cfg
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert "save_every" not in cfg.to_dict() and "device" not in cfg.to_dict()
    assert cfg.replace(r=16).r == 16
    for bad in ({"r": 0}, {"learning_rate": -1.0}, {"val_split": 1.0}, {"quant": "q2"},
                {"lora_dropout": 1.5}, {"max_len": 4}, {"target_modules": ()}):
        with pytest.raises(TrainConfigError):
            TrainConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(TrainConfigError, match="Unknown"):
        TrainConfig.from_dict({"rank": 3})
    with pytest.raises(TrainConfigError):
        RunOptions(save_every=0)
    with pytest.raises(TrainConfigError, match="precision"):
        RunOptions(precision="fp16")
    assert RunOptions().precision == "auto"


def test_precision_follows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.train import lora

    assert lora.cpu_has_bf16({"avx2", "avx512_bf16"}) and lora.cpu_has_bf16({"amx_bf16"})
    assert not lora.cpu_has_bf16({"avx2", "avx512f"}) and not lora.cpu_has_bf16(set())
    monkeypatch.setattr(lora, "cpu_has_bf16", lambda: True)
    assert lora._precision("cpu", "auto") == "bf16"
    assert lora._precision("cpu", "fp32") == "fp32"
    monkeypatch.setattr(lora, "cpu_has_bf16", lambda: False)
    assert lora._precision("cpu", "auto") == "fp32"
    assert lora._precision("cpu", "bf16") == "bf16"  # asked for: emulated, but honoured


def test_default_out_id() -> None:
    assert default_out_id("smollm2-135m-instruct-q4_1", Path("x/grounded.jsonl"), "q8_0") \
        == "smollm2-135m-instruct-grounded-q8_0"
    assert default_out_id("qwen2.5-coder-0.5b-instruct-q4_k_m", Path("my data.jsonl"),
                          "q4_k_m") == "qwen2.5-coder-0.5b-instruct-my-data-q4_k_m"


# -- masking ---------------------------------------------------------------------------------


class FakeChatTokenizer:
    """ChatML rendering and one token per character or special marker, with offsets."""

    chat_template = "chatml"
    bos_token = None
    bos_token_id = None
    eos_token = "<|im_end|>"
    _SPLIT = re.compile(r"<\|im_start\|>|<\|im_end\|>|.", re.S)

    def apply_chat_template(self, messages: list[dict[str, Any]], tokenize: bool = False,
                            add_generation_prompt: bool = False) -> str:
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")

    def __call__(self, text: str, add_special_tokens: bool = False,
                 return_offsets_mapping: bool = False) -> dict[str, Any]:
        pieces = [(m.group(), m.start(), m.end()) for m in self._SPLIT.finditer(text)]
        ids = [1 if p == "<|im_start|>" else 2 if p == "<|im_end|>" else ord(p[0]) + 10
               for p, _, _ in pieces]
        return {"input_ids": ids, "offset_mapping": [(a, b) for _, a, b in pieces]}

    def decode(self, ids: list[int]) -> str:
        return "".join("<S>" if i == 1 else "<E>" if i == 2 else chr(i - 10) for i in ids)


def test_only_learned_assistant_turns_carry_loss() -> None:
    tok = FakeChatTokenizer()
    enc = ChatEncoder(tok)
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "ex"}, {"role": "assistant", "content": "EX", "weight": 0},
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "Ab"},
    ]
    e = enc.encode(messages)
    learned = tok.decode([t for t, lab in zip(e.input_ids, e.labels, strict=True)
                          if lab != IGNORE])
    assert learned == "Ab<E>"  # the reply and its end-of-turn token, nothing else
    assert e.n_target == 3 and enc.count(messages) == len(e.input_ids)


# -- manifest and registration ---------------------------------------------------------------


def test_manifest_text_round_trips() -> None:
    doc = {"schema": 1, "model": [{
        "id": "m", "size": 3, "sha256": "ab", "ok": True, "x": None, "name": 'q"uote\\ é 🙂',
        "lineage": {"base": {"id": "b", "sha256": "cd"}, "lora": {"r": 8, "lr": 2e-05,
                                                                    "mods": ["q_proj", "v"]},
                    "metrics": {"history": [{"epoch": 1, "val_loss": None, "train": 0.5}],
                                "val_loss": None, "weird key": 1.5}},
    }]}
    text = dump_manifest(doc)
    back = tomllib.loads(text)
    assert back["model"][0]["name"] == 'q"uote\\ é 🙂'
    assert back["model"][0]["lineage"]["lora"]["lr"] == 2e-05
    assert back["model"][0]["lineage"]["metrics"]["history"] == [{"epoch": 1, "train": 0.5}]
    assert "x" not in back["model"][0]


def test_register_refuses_taken_ids_and_removes(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home")
    gguf = tmp_path / "a.gguf"
    gguf.write_bytes(b"GGUF first")
    lineage = {"base": {"id": "smollm2-135m-instruct-q4_1", "sha256": "0" * 64},
               "data": {"sha256": "1" * 64}, "lora": TrainConfig().to_dict(),
               "metrics": {"val_loss": 0.5}, "parity": {"top1": 1.0, "passed": True}}
    entry = register_model(settings, "my-model", gguf, lineage=lineage)
    assert entry.origin == "user" and entry.path.read_bytes() == b"GGUF first"
    assert not gguf.exists() and entry.lineage and entry.lineage["lora"]["r"] == 8
    listed = Registry.load(settings).get("my-model").to_json()
    assert listed["origin"] == "user" and listed["lineage"]["parity"]["passed"] is True
    assert listed["sha256"] == entry.sha256 and listed["size"] == len(b"GGUF first")

    second = tmp_path / "b.gguf"
    second.write_bytes(b"GGUF second")
    with pytest.raises(ModelExistsError, match="--force"):
        register_model(settings, "my-model", second, lineage=lineage)
    with pytest.raises(ModelExistsError, match="packaged"):
        register_model(settings, "smollm2-135m-instruct-q4_1", second, lineage=lineage,
                       force=True)
    replaced = register_model(settings, "my-model", second, lineage=lineage, force=True)
    assert replaced.path.read_bytes() == b"GGUF second" and replaced.path != entry.path
    assert not entry.path.exists()  # the replaced file is gone, after the manifest changed
    files = sorted(p.name for p in settings.user_models_dir.glob("*.gguf"))
    assert len(files) == 1
    remove_model(settings, "my-model")
    assert "my-model" not in Registry.load(settings)
    assert not list(settings.user_models_dir.glob("*.gguf"))


# -- grounded data ---------------------------------------------------------------------------


def _squad() -> list[Article]:
    def q(i: str, text: str, answers: list[str], art: str, p: int) -> Question:
        return Question(id=i, question=text, answers=answers, answerable=bool(answers),
                        article=art, paragraph_index=p)

    art = "Rivers"
    paras = [
        Paragraph("The Nile is the longest river in Africa. It flows north into the sea.",
                  [q("a1", "Which river is the longest in Africa?", ["The Nile"], art, 0),
                   q("u1", "Which river is the shortest in Africa?", [], art, 0)]),
        Paragraph("The Amazon carries more water than any other river in the world.",
                  [q("a2", "Which river carries the most water?", ["The Amazon"], art, 1),
                   q("u2", "Which river carries the least water?", [], art, 1)]),
        Paragraph("The Danube flows through ten countries of central Europe.",
                  [q("a3", "How many countries does the Danube flow through?", ["ten"], art,
                     2)]),
        Paragraph("Rivers carry sediment that builds deltas where they meet the sea.",
                  [q("a4", "What do rivers build where they meet the sea?", ["deltas"], art,
                     3)]),
    ]
    return [Article(art, paras)]


def words(text: str) -> int:
    return len(text.split())


def test_grounded_examples_use_the_pipeline_prompt(tmp_path: Path) -> None:
    articles = _squad()
    finder = SquadSources(articles, tmp_path / "corpus")
    examples, report = build_grounded(articles, finder, words,
                                      GroundedOptions(sources=2, abstain_share=0.5,
                                                      hard_negative_share=0.25, seed=3))
    assert report.examples == len(examples) > 0 and report.answer >= 1
    assert report.abstain_unanswerable >= 1 and report.abstain_hard_negative == 1
    for ex in examples:
        msgs = ex["messages"]
        reply = msgs[-1]["content"]
        user = msgs[-2]["content"]
        question = user.split("Question: ", 1)[1].split("\n", 1)[0]
        hits = [h for h in finder(next(q for a in articles for q in a.questions
                                       if q.question == question), 6)]
        # The context is exactly what the pipeline builds (same system prompt, worked
        # examples and format); only the sources chosen and their order vary.
        reference = build_rag_prompt(question, hits, count_tokens=words, n_ctx=4096,
                                     max_tokens=256)
        assert msgs[0] == reference.messages[0]
        assert [m["content"] for m in msgs[1:-2]] == \
            [m["content"] for m in reference.messages[1:-1]]
        assert all(m.get("weight") == 0 for m in msgs[1:-2] if m["role"] == "assistant")
        blocks = dict(re.findall(r'<source id="(\d+)"[^>]*>\n(.*?)\n</source>', user, re.S))
        if reply == ABSTAIN_SENTENCE:
            q = next(q for a in articles for q in a.questions if q.question == question)
            if q.answerable:  # a hard negative: no source holds the answer
                assert not any(answer_in_text(q.answers, t) for t in blocks.values())
        else:
            n = re.search(r"\[(\d+)\]\.$", reply)
            assert n, reply
            answer = reply[: n.start()].strip()
            assert answer.lower() in blocks[n.group(1)].lower()
    report_2 = build_grounded(articles, finder, words, GroundedOptions(sources=2, seed=3,
                                                                       abstain_share=0.5,
                                                                       hard_negative_share=0.25))
    assert report_2[0] == examples  # seeded


def test_grounded_hold_out_keeps_questions_out_of_every_example(tmp_path: Path) -> None:
    articles = _squad()
    finder = SquadSources(articles, tmp_path / "corpus")
    options = GroundedOptions(sources=2, abstain_share=0.5, hard_negative_share=0.0, seed=3)
    full, _ = build_grounded(articles, finder, words, options)
    held, report = build_grounded(articles, finder, words, replace(options, hold_out=1))
    assert report.held_out_questions == 1

    def asked(examples: list[dict[str, Any]]) -> set[str]:
        return {e["messages"][-2]["content"].split("Question: ", 1)[1].split("\n", 1)[0]
                for e in examples}

    answerable = {q.question for a in articles for q in a.questions if q.answerable}
    missing = (asked(full) - asked(held)) & answerable
    assert len(missing) == 1  # exactly one answerable question left out, nowhere used
    assert build_grounded(articles, finder, words, replace(options, hold_out=1))[0] == held
    with pytest.raises(InputError, match="hold-out"):
        GroundedOptions(hold_out=-1)


def test_grounded_drops_held_out_sources(tmp_path: Path) -> None:
    articles = _squad()
    finder = SquadSources(articles, tmp_path / "corpus")
    examples, _ = build_grounded(articles, finder, words, GroundedOptions(sources=2),
                                 exclude_articles=["Rivers"])
    assert examples == []


def test_grounded_split_of_the_shared_squad_leaves_test_unseen(tmp_path: Path) -> None:
    path = Path("/work/shared/data/squad2-dev-a/squad2-dev-a.json")
    if not path.is_file():
        pytest.skip("the shared SQuAD file is not on this machine")
    from appliance.evaluate.squad import TEST_ARTICLES, load_squad
    from appliance.train.grounded import held_out_articles

    dev, test = held_out_articles(load_squad(path))
    assert {a.title for a in test} == set(TEST_ARTICLES)
    examples, report = build_grounded(dev, SquadSources(dev, tmp_path), words,
                                      GroundedOptions(limit=60, seed=1),
                                      exclude_articles=[a.title for a in test])
    assert len(examples) == 60 == report.examples
    text = json.dumps(examples)
    assert not any(t in text for t in TEST_ARTICLES)
    share = sum(e["messages"][-1]["content"] == ABSTAIN_SENTENCE for e in examples) / 60
    assert 0.25 <= share <= 0.55


def _squad_file(path: Path, articles: list[Article]) -> Path:
    data = {"version": "v2.0", "data": [
        {"title": a.title, "paragraphs": [
            {"context": p.context, "qas": [
                {"id": q.id, "question": q.question, "is_impossible": not q.answerable,
                 "answers": [{"text": t, "answer_start": max(0, p.context.find(t))}
                             for t in q.answers]}
                for q in p.questions]}
            for p in a.paragraphs]}
        for a in articles]}
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _two_articles() -> list[Article]:
    rivers = _squad()[0]
    lakes = Article("Lakes", [Paragraph(
        "Lake Baikal is the deepest lake in the world.",
        [Question(id="l1", question="Which lake is the deepest?", answers=["Lake Baikal"],
                  answerable=True, article="Lakes", paragraph_index=0)])])
    return [rivers, Article("Mountains", rivers.paragraphs), lakes]


def test_grounded_cli_never_overwrites_inputs_or_existing_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    squad = _squad_file(tmp_path / "squad.json", _two_articles())
    before = squad.read_bytes()
    code, text = run_main(capsys, "train-data", "grounded", "--squad", str(squad), "-o",
                           str(squad), "--force")
    assert code == 2 and "input of this command" in text and squad.read_bytes() == before

    existing = tmp_path / "out.jsonl"
    existing.write_text("keep\n", encoding="utf-8")
    code, text = run_main(capsys, "train-data", "grounded", "--squad", str(squad), "-o",
                           str(existing))
    assert code == 2 and "--force" in text and existing.read_text(encoding="utf-8") == "keep\n"

    blocker = tmp_path / "afile"
    blocker.write_text("x", encoding="utf-8")
    code, text = run_main(capsys, "train-data", "grounded", "--squad", str(squad), "-o",
                           str(blocker / "x.jsonl"))
    assert code == 2 and "not a folder" in text and "Traceback" not in text

    one = _squad_file(tmp_path / "one.json", [_squad()[0]])
    code, text = run_main(capsys, "train-data", "grounded", "--squad", str(one), "-o",
                           str(existing), "--force")
    assert code == 2 and "dev split" in text and existing.read_text(encoding="utf-8") == "keep\n"


def test_grounded_cli_refuses_zero_examples_then_writes_with_force(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    squad = _squad_file(tmp_path / "squad.json", _two_articles())
    existing = tmp_path / "out.jsonl"
    existing.write_text("keep\n", encoding="utf-8")
    model = ("--model", "smollm2-135m-instruct-q4_1")
    code, text = run_main(capsys, "train-data", "grounded", "--squad", str(squad), "-o",
                           str(existing), "--force", "--hold-out", "100000", *model)
    assert code == 2 and "No examples" in text and "--hold-out" in text
    assert existing.read_text(encoding="utf-8") == "keep\n"
    code, text = run_main(capsys, "train-data", "grounded", "--squad", str(squad), "-o",
                           str(existing), "--force", *model)
    assert code == 0, text
    assert all(json.loads(line)["messages"] for line in existing.read_text().splitlines())


def test_grounded_refuses_a_users_knowledge_base(tmp_path: Path) -> None:
    from contextlib import nullcontext
    from types import SimpleNamespace

    from appliance.evaluate.squad import squad_corpus_dir
    from appliance.train.grounded import check_squad_kb

    home = tmp_path / "home"
    corpus = squad_corpus_dir(home, "kb1")

    def app(paths: list[str]) -> Any:
        store = SimpleNamespace(documents=lambda: [SimpleNamespace(path=p) for p in paths])
        return SimpleNamespace(settings=SimpleNamespace(home=home),
                               list_kbs=lambda: ["kb1"],
                               open_kb=lambda name: nullcontext(store))

    check_squad_kb(app([]), "new-kb")  # a new one is created for SQuAD
    check_squad_kb(app([str(corpus / "Rivers_000.txt")]), "kb1")
    user = app([str(corpus / "Rivers_000.txt"), "/home/me/notes/plan.md"])
    with pytest.raises(InputError, match=r"'kb1'.*new --kb"):
        check_squad_kb(user, "kb1")
    with pytest.raises(InputError, match="new --kb"):
        check_squad_kb(app([str(home / "eval" / "squad" / "other" / "Rivers_000.txt")]), "kb1")


# -- CLI and imports -------------------------------------------------------------------------


def test_cli_rejects_bad_data_fast_and_registers_nothing(tmp_path: Path) -> None:
    data = write_lines(tmp_path / "bad.jsonl", [json.dumps(GOOD[0]), "{broken",
                                                json.dumps(chat("q", ""))])
    home = tmp_path / "home"
    t0 = time.perf_counter()
    proc = run_cli("train", str(data), "--base", "smollm2-135m-instruct-q4_1", home=home)
    assert proc.returncode == 2, proc.stderr
    assert time.perf_counter() - t0 < 30
    assert "line 2" in proc.stderr and "line 3" in proc.stderr
    assert "broken JSON" in proc.stderr and "empty assistant turn" in proc.stderr
    assert not (home / "models" / "manifest.toml").exists() and not (home / "train").exists()
    check = run_cli("train-data", "check", str(data), "--json", home=home)
    assert check.returncode == 2
    assert json.loads(check.stdout)["counts"]["json"] == 1


def test_run_time_path_does_not_import_torch() -> None:
    code = ("import sys, appliance.cli, appliance.train, appliance.train.data, "
            "appliance.train.grounded, appliance.train.register, appliance.train.export, "
            "appliance.train.parity, appliance.train.lora\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'transformers', 'peft', 'optimum'))\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
