"""tools/preprocess_sft.py: chat, instruction and Stack Exchange inputs to tokens + loss mask, with reports."""

import json
import os
import re

import numpy as np
import pytest
import zstandard

from megasci.corpus.synthetic import generate_papers
from megasci.data.conversations import Example
from megasci.data.indexed_dataset import IndexedDataset
from megasci.data.sft import SFTConfig, SFTError, preprocess_sft
from megasci.data.sidecar import read_sidecar
from megasci.data.stackexchange import html_to_text, iter_post_rows, iter_stackexchange, parse_tags
from megasci.tokenizer import SentencePieceTrainConfig, load_tokenizer, train_sentencepiece

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "post_training_sample")


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("sft_tok") / "chat.model")
    train_sentencepiece(
        (p["text"] for p in generate_papers(30, seed=41)),
        path,
        SentencePieceTrainConfig(vocab_size=900, num_threads=2, chat_template="megasci-v1"),
    )
    return path


def read_documents(prefix):
    ds = IndexedDataset(prefix)
    return [ds.get_document(d).tolist() for d in range(ds.num_documents)], ds


def run(tmp_path, chat_model, inputs, **kw):
    cfg = SFTConfig(inputs=inputs, output_prefix=str(tmp_path / "out" / "sft"), tokenizer_model=chat_model, **kw)
    logged = []
    summary = preprocess_sft(cfg, progress=False, log=logged.append)
    with open(str(tmp_path / "out" / "sft") + "_sft.json", encoding="utf-8") as f:
        report = json.load(f)
    return summary, report, logged


def check_aligned_and_rendered(prefix, tokenizer, conversations):
    """Tokens equal the whole rendered string's encoding; the mask is 1 exactly on assistant content + end."""
    docs, ds = read_documents(prefix + "_text_document")
    masks, mask_ds = read_documents(prefix + "_loss_mask_document")
    assert mask_ds.dtype == np.uint8
    np.testing.assert_array_equal(mask_ds.sizes, ds.sizes)
    np.testing.assert_array_equal(mask_ds.document_indices, ds.document_indices)
    template = tokenizer.chat_template
    assert len(docs) == len(conversations)
    for ids, mask, messages in zip(docs, masks, conversations):
        assert ids == tokenizer.encode(template.render(messages))
        scored = "".join(m["content"] + "<|end|>" for m in messages if m["role"] == "assistant")
        assert tokenizer.decode([t for t, m in zip(ids, mask) if m]) == scored
        assert sum(mask) == sum(len(tokenizer.encode(m["content"])) + 1 for m in messages if m["role"] == "assistant")


GOOD_CHATS = [
    [{"role": "user", "content": "What is $\\int_0^1 x\\,dx$?"}, {"role": "assistant", "content": "It is $\\frac12$."}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Schrödinger?"},
        {"role": "assistant", "content": "An equation."},
        {"role": "user", "content": "More?"},
        {"role": "assistant", "content": "$i\\hbar\\partial_t\\psi = H\\psi$"},
    ],
]
BAD_CHAT_LINES = {  # line text -> (reason, message fragment)
    json.dumps({"messages": [{"content": "no role"}, {"role": "assistant", "content": "a"}]}): (
        "missing_role",
        "no role",
    ),
    json.dumps({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]}): (
        "empty_turn",
        "is empty",
    ),
    json.dumps({"messages": [{"role": "user", "content": 7}, {"role": "assistant", "content": "a"}]}): (
        "non_string_content",
        "is a int",
    ),
    json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}]}): (
        "unknown_role",
        "'robot'",
    ),
    json.dumps({"messages": [{"role": "user", "content": "only a question"}]}): (
        "no_assistant_turn",
        "no assistant turn",
    ),
    json.dumps({"text": "pretraining text"}): ("unknown_format", "neither 'messages'"),
    '{"messages": [': ("bad_json", "not valid JSON"),
    json.dumps({"instruction": "Solve $x+1=2$.", "output": ["x", "=", "1"]}): ("non_string_content", "is a list"),
}


def chat_file_lines():
    lines = [json.dumps({"messages": GOOD_CHATS[0], "prompt_id": "p0"})]
    lines += list(BAD_CHAT_LINES)
    lines.append(json.dumps({"messages": GOOD_CHATS[1]}, ensure_ascii=True))  # \u escapes, as UltraChat ships
    lines.append(json.dumps({"instruction": "Solve $x+1=2$.", "output": "$x=1$", "source": "data/CoT/aqua_rat.json"}))
    lines.append(json.dumps({"instruction": "Add.", "input": "2 and 3", "output": "5"}))
    return lines


INSTRUCTION_CHATS = [
    [{"role": "user", "content": "Solve $x+1=2$."}, {"role": "assistant", "content": "$x=1$"}],
    [{"role": "user", "content": "Add.\n\n2 and 3"}, {"role": "assistant", "content": "5"}],
]


@pytest.mark.parametrize("compressed", [False, True])
def test_chat_and_instruction_records_with_bad_ones_reported_by_line(tmp_path, chat_model, compressed):
    data = "\n".join(chat_file_lines()).encode()  # no final newline, as UltraChat ships
    path = tmp_path / ("mixed.jsonl.zst" if compressed else "mixed.jsonl")
    path.write_bytes(zstandard.ZstdCompressor().compress(data) if compressed else data)
    summary, report, logged = run(tmp_path, chat_model, [str(path)])
    tok = load_tokenizer(chat_model)
    check_aligned_and_rendered(str(tmp_path / "out" / "sft"), tok, GOOD_CHATS + INSTRUCTION_CHATS)
    want = {f"{path}:{i + 2}": reason for i, (reason, _) in enumerate(BAD_CHAT_LINES.values())}
    assert {s["where"]: s["kind"] for s in report["skipped_records"]} == want
    for s, (_, fragment) in zip(report["skipped_records"], BAD_CHAT_LINES.values()):
        assert fragment in s["message"]
    assert any(m.startswith(f"skipped {path}:2: ") for m in logged)
    name = "mixed"
    assert summary.sources[name].conversations == 3 and summary.sources["data/CoT/aqua_rat.json"].conversations == 1
    assert report["summary"]["skipped"] == {
        "missing_role": 1,
        "empty_turn": 1,
        "non_string_content": 2,
        "unknown_role": 1,
        "no_assistant_turn": 1,
        "unknown_format": 1,
        "bad_json": 1,
    }
    sidecar = read_sidecar(str(tmp_path / "out" / "sft_text_document"))
    assert [r["source"] for r in sidecar] == [name, name, "data/CoT/aqua_rat.json", name]
    assert sidecar[0]["id"] == "p0" and sidecar[1]["id"] == f"{path}:{len(BAD_CHAT_LINES) + 2}"
    assert report["tokenizer"]["chat_template"]["name"] == "megasci-v1"


def test_parquet_records_equal_jsonl_records(tmp_path, chat_model):
    pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install 'megasci[parquet]')")
    import pyarrow.parquet as pq

    rows = [{"messages": m, "source": "ultrachat"} for m in GOOD_CHATS * 3]
    pq.write_table(pa.Table.from_pylist(rows), str(tmp_path / "chat.parquet"), row_group_size=2)
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run(tmp_path / "a", chat_model, [str(tmp_path / "chat.parquet")])
    run(tmp_path / "b", chat_model, [str(tmp_path / "chat.jsonl")])
    for name in ("sft_text_document", "sft_loss_mask_document"):
        assert (
            read_documents(str(tmp_path / "a" / "out" / name))[0]
            == read_documents(str(tmp_path / "b" / "out" / name))[0]
        )
    check_aligned_and_rendered(str(tmp_path / "a" / "out" / "sft"), load_tokenizer(chat_model), GOOD_CHATS * 3)
    bad = [{"messages": GOOD_CHATS[0]}, {"messages": [{"role": "user", "content": "q"}]}]
    pq.write_table(pa.Table.from_pylist(bad), str(tmp_path / "bad.parquet"))
    _, report, _ = run(tmp_path / "c", chat_model, [str(tmp_path / "bad.parquet")])
    assert [(s["where"], s["kind"]) for s in report["skipped_records"]] == [
        (f"{tmp_path / 'bad.parquet'}:row 2", "no_assistant_turn")
    ]


def test_json_array_instruction_files_mathinstruct_and_alpaca(tmp_path, chat_model):
    """MathInstruct ships one compact array of {source, output, instruction}, Alpaca one indented array of
    {instruction, input, output}: elements are records, a non-object element a skip named `file[index]`."""
    math = [
        {
            "source": "data/CoT/gsm_rft.json",
            "output": "3 + 4 = 7 apples.\nThe answer is 7",
            "instruction": "Ann has 3 apples and buys 4. How many does she have?",
        },
        {"source": "data/PoT/numglue.json", "output": "print(3 + 4)", "instruction": "3 plus 4? Write a program."},
        7,
    ]
    alpaca = [
        {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat well, move, sleep."},
        {"instruction": "Correct the spelling.", "input": "He finnished", "output": "He finished"},
    ]
    (tmp_path / "MathInstruct.json").write_text(json.dumps(math, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "alpaca_data.json.zst").write_bytes(
        zstandard.ZstdCompressor().compress(json.dumps(alpaca, indent=4).encode())
    )
    inputs = [str(tmp_path / "MathInstruct.json"), str(tmp_path / "alpaca_data.json.zst")]
    summary, report, _ = run(tmp_path, chat_model, inputs)
    chats = [
        [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}] for r in math[:2]
    ]
    chats.append(
        [{"role": "user", "content": alpaca[0]["instruction"]}, {"role": "assistant", "content": alpaca[0]["output"]}]
    )
    chats.append(
        [
            {"role": "user", "content": "Correct the spelling.\n\nHe finnished"},
            {"role": "assistant", "content": "He finished"},
        ]
    )
    check_aligned_and_rendered(str(tmp_path / "out" / "sft"), load_tokenizer(chat_model), chats)
    assert [(s["where"], s["kind"]) for s in report["skipped_records"]] == [(f"{inputs[0]}[2]", "not_an_object")]
    assert {name: c.conversations for name, c in summary.sources.items()} == {
        "data/CoT/gsm_rft.json": 1,
        "data/PoT/numglue.json": 1,
        "alpaca_data": 2,
    }
    sidecar = read_sidecar(str(tmp_path / "out" / "sft_text_document"))
    assert [r["id"] for r in sidecar] == [f"{inputs[0]}[0]", f"{inputs[0]}[1]", f"{inputs[1]}[0]", f"{inputs[1]}[1]"]


def posts_xml(rows, crlf=True):
    """A Stack Exchange dump as the real ones are: BOM, declaration, one <posts> root, no final newline."""
    newline = "\r\n" if crlf else "\n"
    body = newline.join(['<?xml version="1.0" encoding="utf-8"?>', "<posts>"] + ["  " + r for r in rows] + ["</posts>"])
    return "\ufeff".encode() + body.encode()


def row(**attrs):
    return "<row " + " ".join(f'{k}="{v}"' for k, v in attrs.items()) + " />"


QUESTION_BODY = (
    "&lt;p&gt;Why is $e^{i\\pi} + 1 = 0$?&lt;/p&gt;&#xA;&#xA;&lt;p&gt;I tried&lt;/p&gt;&#xA;"
    "&lt;pre&gt;&lt;code&gt;if a &amp;lt; b:&#xA;    print(&amp;quot;x&amp;quot;)&#xA;&lt;/code&gt;&lt;/pre&gt;&#xA;"
)
ANSWER_BODY = (
    "&lt;p&gt;Because $$e^{i\\theta} = \\cos\\theta + i\\sin\\theta.$$&lt;/p&gt;&#xA;"
    "&lt;ul&gt;&#xA;&lt;li&gt;use &lt;code&gt;cmath&lt;/code&gt;&lt;/li&gt;&#xA;&lt;li&gt;&lt;em&gt;or&lt;/em&gt; "
    "&lt;a href=&quot;http://x&quot;&gt;this&lt;/a&gt;&lt;/li&gt;&#xA;&lt;/ul&gt;&#xA;"
)
QUESTION_TEXT = 'Why is $e^{i\\pi} + 1 = 0$?\n\nI tried\n\n```\nif a < b:\n    print("x")\n```'
ANSWER_TEXT = "Because $$e^{i\\theta} = \\cos\\theta + i\\sin\\theta.$$\n\n- use `cmath`\n- or this"


def stackexchange_rows():
    return [
        # The answer comes before its question (rows are not in Id order).
        row(Id=11, PostTypeId=2, ParentId=10, Score=5, Body=ANSWER_BODY),
        row(
            Id=10,
            PostTypeId=1,
            AcceptedAnswerId=11,
            Score=3,
            Title="Euler &amp; identity",
            Tags="&lt;complex&gt;&lt;euler&gt;",
            Body=QUESTION_BODY,
        ),
        row(Id=12, PostTypeId=1, Score=1, Title="Unanswered", Tags="|a|", Body="&lt;p&gt;q&lt;/p&gt;"),
        row(Id=13, PostTypeId=1, AcceptedAnswerId=14, Score=0, Title="Low", Tags="|x|y|", Body="&lt;p&gt;q&lt;/p&gt;"),
        row(Id=14, PostTypeId=2, ParentId=13, Score=9, Body="&lt;p&gt;a&lt;/p&gt;"),
        row(PostTypeId=1, Score=1, Body="no id"),
        row(Id=16, PostTypeId="one", Body="bad type"),
        row(Id=17, PostTypeId=1, AcceptedAnswerId=99, Score=4, Title="Lost answer", Body="&lt;p&gt;q&lt;/p&gt;"),
        row(Id=18, PostTypeId=1, AcceptedAnswerId=19, Score=4, Title="Wrong parent", Body="&lt;p&gt;q&lt;/p&gt;"),
        row(Id=19, PostTypeId=2, ParentId=12, Score=4, Body="&lt;p&gt;a&lt;/p&gt;"),
        row(
            Id=20,
            PostTypeId=1,
            AcceptedAnswerId=21,
            Score=2,
            Title="Pipes",
            Tags="|linear-algebra|matrices|",
            Body="&lt;p&gt;$A^{-1}$?&lt;/p&gt;",
        ),
        row(Id=21, PostTypeId=2, ParentId=20, Score=2, Body="&lt;p&gt;Invert it.&lt;/p&gt;"),
        row(Id=22, PostTypeId=5, Body=""),
    ]


def test_stackexchange_pairs_tags_math_and_bad_rows(tmp_path, chat_model):
    site = tmp_path / "math.stackexchange.com"
    site.mkdir()
    path = site / "Posts.xml"
    path.write_bytes(posts_xml(stackexchange_rows()))
    summary, report, _ = run(tmp_path, chat_model, [str(path)], min_score=1)
    conversations = [
        [
            {"role": "user", "content": "Euler & identity\n\n" + QUESTION_TEXT},
            {"role": "assistant", "content": ANSWER_TEXT},
        ],
        [{"role": "user", "content": "Pipes\n\n$A^{-1}$?"}, {"role": "assistant", "content": "Invert it."}],
    ]
    check_aligned_and_rendered(str(tmp_path / "out" / "sft"), load_tokenizer(chat_model), conversations)
    sidecar = read_sidecar(str(tmp_path / "out" / "sft_text_document"))
    assert sidecar == [
        {
            "source": "stackexchange/math.stackexchange.com",
            "id": "math.stackexchange.com/10",
            "answer_id": 11,
            "tags": ["complex", "euler"],
            "score": 3,
            "answer_score": 5,
        },
        {
            "source": "stackexchange/math.stackexchange.com",
            "id": "math.stackexchange.com/20",
            "answer_id": 21,
            "tags": ["linear-algebra", "matrices"],
            "score": 2,
            "answer_score": 2,
        },
    ]
    # Line 1 holds the declaration; row k of the list sits on line k + 2.
    skipped = {(s["where"], s["kind"]) for s in report["skipped_records"]}
    assert skipped == {
        (f"{path}:8", "bad_row"),  # no Id
        (f"{path}:9 (row Id 16)", "bad_row"),
        (f"{path}:10 (row Id 17)", "accepted_answer_missing"),
        (f"{path}:12 (row Id 19)", "bad_row"),  # ParentId is not the question
        (f"{path}:6 (row Id 13)", "score_below_minimum"),
    }
    assert summary.ignored == {"question_without_accepted_answer": 1, "post_type_5": 1}


def test_broken_xml_is_reported_by_line_and_the_rows_before_it_kept(tmp_path, chat_model):
    rows = (
        stackexchange_rows()[:2]
        + ['<row Id="30" PostTypeId="1" Body="a raw < in an attribute" />']
        + stackexchange_rows()[10:12]
    )
    path = tmp_path / "Posts.xml"
    path.write_bytes(posts_xml(rows, crlf=False))
    summary, report, _ = run(tmp_path, chat_model, [str(path)])
    assert summary.conversations == 1
    assert [(s["where"], s["kind"]) for s in report["skipped_records"]] == [(f"{path}:5", "bad_xml")]
    with pytest.raises(SFTError, match=r"Posts\.xml:5: not well-formed XML"):
        run(tmp_path / "strict", chat_model, [str(path)], strict=True)
    assert not os.path.exists(tmp_path / "strict" / "out" / "sft_text_document.bin")


def test_html_to_text_by_hand():
    assert html_to_text("<p>a &lt; b and $x&lt;y$</p>\n\n<p>two</p>") == "a < b and $x<y$\n\ntwo"
    assert (
        html_to_text("<blockquote><p>quoted</p><p>more</p></blockquote><p>after</p>") == "> quoted\n\n> more\n\nafter"
    )
    assert html_to_text("<ol><li>one</li><li>two</li></ol>") == "1. one\n2. two"
    assert html_to_text("<p>line<br>break</p><hr><p>x <code>a&amp;b</code></p>") == "line\nbreak\n\n---\n\nx `a&b`"
    assert html_to_text("<pre><code>  indented\n\n\nkept</code></pre>") == "```\n  indented\n\n\nkept\n```"
    assert parse_tags("<a><b-c>") == ["a", "b-c"] and parse_tags("|a|b-c|") == ["a", "b-c"] and parse_tags(None) == []


def test_strict_stops_at_the_first_bad_record_and_writes_nothing(tmp_path, chat_model):
    path = tmp_path / "c.jsonl"
    path.write_text(
        json.dumps({"messages": GOOD_CHATS[0]}) + "\n" + json.dumps({"messages": [{"role": "user"}]}) + "\n"
    )
    with pytest.raises(SFTError, match=r"c\.jsonl:2: message 0 \(user\) has no content"):
        run(tmp_path, chat_model, [str(path)], strict=True)
    assert os.listdir(tmp_path / "out") == []  # no dataset, sidecar, report or temporary file left


def test_a_tokenizer_without_a_template_is_refused(tmp_path):
    plain = str(tmp_path / "plain.model")
    train_sentencepiece(
        (p["text"] for p in generate_papers(10, seed=42)),
        plain,
        SentencePieceTrainConfig(vocab_size=400, num_threads=1),
    )
    (tmp_path / "c.jsonl").write_text(json.dumps({"messages": GOOD_CHATS[0]}) + "\n")
    with pytest.raises(SFTError, match="has no chat template"):
        preprocess_sft(SFTConfig([str(tmp_path / "c.jsonl")], str(tmp_path / "o"), plain), progress=False)


def test_tool_interface_and_exit_codes(tmp_path, chat_model, run_tool, capsys):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join([json.dumps({"messages": GOOD_CHATS[1]}), "{bad"]))
    args = [
        "--input",
        str(path),
        "--output-prefix",
        str(tmp_path / "o"),
        "--tokenizer-model",
        chat_model,
        "--no-progress",
        "--append-eod",
    ]
    assert run_tool("preprocess_sft.py", args) == 0
    out = capsys.readouterr().out
    assert "[c] 1 conversations" in out and "bad_json: 1" in out
    ids = read_documents(str(tmp_path / "o_text_document"))[0][0]
    mask = read_documents(str(tmp_path / "o_loss_mask_document"))[0][0]
    assert ids[-1] == load_tokenizer(chat_model).eod_id and mask[-1] == 0
    assert run_tool("preprocess_sft.py", args + ["--strict"]) == 1
    assert "--strict stops" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared/post_training_sample is not present")
def test_real_samples_parse(tmp_path, chat_model):
    ultrachat = os.path.join(SHARED, "ultrachat", "mamba-chat_ultrachat_small.jsonl")
    dumps = [
        os.path.join(SHARED, "stackexchange", d, "Posts.xml") for d in ("conlang_meta_2020", "datascience_meta_2024")
    ]
    summary, report, _ = run(tmp_path, chat_model, [ultrachat] + dumps)
    with open(ultrachat, encoding="utf-8") as f:
        chats = [json.loads(line)["messages"] for line in f]
    assert summary.sources["mamba-chat_ultrachat_small"].conversations == len(chats) == 1000
    assert report["skipped_records"] == []
    for dump in dumps:
        with open(dump, encoding="utf-8-sig") as f:
            text = f.read()
        questions = re.findall(r'<row Id="\d+" PostTypeId="1" AcceptedAnswerId="\d+"', text)
        examples = [e for e in iter_stackexchange(dump) if isinstance(e, Example)]
        site = os.path.basename(os.path.dirname(dump))
        assert len(examples) == len(questions) > 0
        assert summary.sources[f"stackexchange/{site}"].conversations == len(questions)
        assert all(e.meta["tags"] and all("<" not in t and "|" not in t for t in e.meta["tags"]) for e in examples)
        assert not any("&lt;" in m["content"] or "<p>" in m["content"] for e in examples for m in e.messages)
    # The 2024 dump's question 6 (no accepted answer, so not a pair) asks for TeX: its math survives as text.
    body = next(r["Body"] for _, r in iter_post_rows(dumps[1]) if r.get("Id") == "6")
    assert html_to_text(body).startswith("Like on math.stackexchange, where (for example) I can type `$\\sqrt{2}$` for")
    tok = load_tokenizer(chat_model)
    docs, _ = read_documents(str(tmp_path / "out" / "sft_text_document"))
    for ids, messages in zip(docs[:50], chats[:50]):
        assert ids == tok.encode(tok.chat_template.render(messages))
