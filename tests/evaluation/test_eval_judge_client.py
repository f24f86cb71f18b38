"""The chat judge of the benchmarks (`src.evaluation.judge_client`, `src.evaluation.judge_server`).

Tested against a real vLLM OpenAI-compatible server on CPU, started by the stage's own code,
serving the tiny policy as a judge: it lists its model, answers, and its judgments are cached
and reused (a second pass pays for nothing; a cache line cut short by a kill is asked again); a
run killed mid-benchmark and run again pays only for the judgments it did not keep, and gets the
same judgments as a run never killed; a judge that dies mid-benchmark ends the run with one line
that keeps what it made. Without the server: no key, an endpoint that does not answer (a closed
local port), a model the endpoint does not serve — each one line, exit 3, before any request;
a served judge's judgments are cached under its weights (a rebuilt one judges again). MT-Bench
on the tiny policy through the stage's parts, graded by that server as one's own
OpenAI-compatible judge (the tiny policy itself: it writes toy sentences, never a rating): the
two turns are answered, every turn judged once, the judgments without a rating counted and the
score none rather than a crash, the result labelled with the judge, a second run paying for no
judgment and giving the same result.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import psutil
import pytest

from src.config import REPO_ROOT, Benchmark, LLMJudgeConfig, Stage
from src.core.errors import EXIT_ENVIRONMENT, EXIT_STAGE_ERROR, EnvironmentFailure, StageError
from src.evaluation import benchmarks
from src.evaluation.judge_client import (
    endpoint_of,
    judge_all,
    read_cache,
    request_id,
    require_reachable,
)
from src.evaluation.judging import JudgeRequest
from tests.support.fastchat import MATH, WRITING, two_questions
from tests.support.helpers import SMALL, closed_port, compose_cfg


def requests(n: int, max_tokens: int = 16) -> list[JudgeRequest]:
    return [
        JudgeRequest(
            f"test/{i}", (("user", f"Write a plan for the budget number {i}."),), 0.0, max_tokens
        )
        for i in range(n)
    ]


# --- refused before any request ------------------------------------------------------------------


def test_a_judge_at_base_url_where_one_is_served_names_the_override_that_grades_with_it():
    from src.config import ConfigError
    from tests.support.helpers import compose_cfg

    with pytest.raises(ConfigError) as refused:
        compose_cfg("model=tiny-mistral", "eval.llm_judge.base_url=http://judge:8000/v1")
    assert str(refused.value).startswith(
        "eval.llm_judge.base_url='http://judge:8000/v1': the judge at base_url is not the one "
        "this stage serves (eval.llm_judge.serve="
    )
    assert "add eval.llm_judge.serve=null" in str(refused.value)
    assert "leave base_url null" in str(refused.value)


def test_a_base_url_that_is_not_an_http_url_is_a_config_error_naming_the_key():
    """`eval.llm_judge.base_url=not-a-url` had been "does not answer", exit 3, as an endpoint
    down is."""
    from src.config import ConfigError
    from tests.support.helpers import compose_cfg

    endpoint = ["model=tiny-mistral", "eval.llm_judge.serve=null"]
    for url in ("not-a-url", "judge-node:8000/v1", "ftp://judge/v1"):
        with pytest.raises(ConfigError, match=r"is not an http\(s\) URL: name the judge's "):
            compose_cfg(*endpoint, f"eval.llm_judge.base_url={url}")
    assert compose_cfg(*endpoint, "eval.llm_judge.base_url=https://judge:8000/v1")


def test_an_openai_model_named_for_a_served_judge_names_the_override_that_grades_with_it():
    """`eval.llm_judge.model=gpt-4` on the tiny preset, which serves tiny-chat-judge: refused,
    not tiny-chat-judge served as gpt-4 with its scores labelled so."""
    from src.config import ConfigError
    from tests.support.helpers import compose_cfg

    with pytest.raises(ConfigError) as refused:
        compose_cfg("model=tiny-mistral", "eval.llm_judge.model=gpt-4")
    said = str(refused.value)
    assert said.startswith("eval.llm_judge.model='gpt-4': names an OpenAI model, but the judge ")
    assert "add eval.llm_judge.serve=null" in said and len(said.splitlines()) == 1
    judge = compose_cfg(
        "model=tiny-mistral", "eval.llm_judge.model=gpt-4", "eval.llm_judge.serve=null"
    )
    assert judge.eval.llm_judge.name == "gpt-4" and judge.eval.llm_judge.serve is None
    assert compose_cfg("model=tiny-mistral", "eval.llm_judge.model=tiny-judge").eval.llm_judge.serve


def test_a_judge_whose_template_takes_no_system_turn_gets_the_system_prompt_in_its_first_turn(
    tmp_path,
):
    """`eval.llm_judge.system_turn=false`, on an endpoint as on a served judge: the system
    prompt opens the first user turn (Mistral-Instruct's template refuses a system turn); null:
    an endpoint takes one. The key enters the eval's fingerprint only when set, so evals made
    before it existed keep their records."""
    from src.core.fingerprints import stage_inputs
    from src.evaluation.benchmarks import judge_endpoint
    from src.evaluation.judge_client import sent_messages
    from tests.support.helpers import compose_cfg

    asked = JudgeRequest("t/0", (("system", "Judge."), ("user", "Q?"), ("assistant", "A.")), 0.0, 8)
    endpoint = ["eval.benchmarks=[mt_bench]", "eval.llm_judge.serve=null",
                "eval.llm_judge.base_url=http://judge:8000/v1"]  # fmt: skip
    for setting, messages in [
        (None, [("system", "Judge."), ("user", "Q?"), ("assistant", "A.")]),
        (True, [("system", "Judge."), ("user", "Q?"), ("assistant", "A.")]),
        (False, [("user", "Judge.\n\nQ?"), ("assistant", "A.")]),
    ]:
        chosen = [] if setting is None else [f"eval.llm_judge.system_turn={str(setting).lower()}"]
        cfg = compose_cfg("model=tiny-mistral", *endpoint, *chosen)
        with judge_endpoint(cfg, tmp_path) as judge:
            sent = [(m["role"], m["content"]) for m in sent_messages(judge, asked)]
        assert sent == messages, setting
        inputs = stage_inputs(cfg.as_tree(), Stage.eval)
        assert ("eval.llm_judge.system_turn" in inputs) == (setting is not None)


def test_openais_judge_without_a_key_is_refused_in_one_line(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    j = LLMJudgeConfig()
    with pytest.raises(EnvironmentFailure) as err:
        require_reachable(endpoint_of(j), j, "mt_bench")
    message = str(err.value)
    assert message.startswith("mt_bench are judged by gpt-4 at https://api.openai.com/v1"), message
    assert "OPENAI_API_KEY is not set" in message and "\n" not in message
    assert err.value.exit_code == EXIT_ENVIRONMENT


def test_an_endpoint_that_does_not_answer_is_refused_in_one_line():
    j = LLMJudgeConfig(base_url=f"http://127.0.0.1:{closed_port()}/v1", api_key_env="", timeout_s=5)
    with pytest.raises(EnvironmentFailure, match=r"which does not answer: Connection error") as err:
        require_reachable(endpoint_of(j), j, "arena_hard")
    assert "\n" not in str(err.value)


def test_the_label_names_where_a_judge_that_is_not_openais_is_served():
    assert endpoint_of(LLMJudgeConfig()).label == "gpt-4"
    local = LLMJudgeConfig(model="judge", base_url="http://127.0.0.1:8000/v1", api_key_env="")
    assert endpoint_of(local).label == "judge@local"
    remote = replace(local, base_url="http://judge-node:8000/v1")
    assert endpoint_of(remote).label == "judge@judge-node:8000"
    # a served model is never gpt-4 by default: it is served, and labelled, by its own name
    served = endpoint_of(
        LLMJudgeConfig(serve="/models/Qwen2.5-72B-Instruct/"), base_url=local.base_url
    )
    assert served.label == "Qwen2.5-72B-Instruct@local"
    assert LLMJudgeConfig(serve="org/Judge-7B", model="j").name == "j"


def test_a_served_judge_rebuilt_in_its_folder_judges_again(tmp_path):
    """A served judge's judgments are cached under its weights, not under its folder's name or
    the port it was served on: the same weights served again reuse them, new weights do not."""
    folder = tmp_path / "judge"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    j = LLMJudgeConfig(serve=str(folder), api_key_env="")
    (request,) = requests(1)

    def cached_as(port: int) -> str:
        return request_id(endpoint_of(j, base_url=f"http://127.0.0.1:{port}/v1"), request)

    first = cached_as(8001)
    assert cached_as(8002) == first
    (folder / "model.safetensors").write_bytes(b"retrained weights")
    assert cached_as(8001) != first


def test_a_cache_line_cut_short_is_asked_again(tmp_path):
    j = LLMJudgeConfig(model="m", base_url="http://127.0.0.1:1/v1", api_key_env="")
    e = endpoint_of(j)
    first, second = requests(2)
    cache = tmp_path / "mt_bench.jsonl"
    whole = {
        "id": request_id(e, first),
        "key": first.key,
        "text": "[[5]]",
        "prompt_tokens": 3,
        "completion_tokens": 2,
    }
    cut = json.dumps({**whole, "id": request_id(e, second)})[:-9]
    cache.write_text(json.dumps(whole) + "\n" + cut)
    assert set(read_cache(cache)) == {request_id(e, first)}


def test_a_run_after_a_cut_line_writes_whole_lines_and_the_next_run_pays_for_nothing(tmp_path):
    """The cut line goes before the next judgment is appended: appended onto it, both would be
    unreadable, and the run after would pay for the second again."""
    with judging(lambda _: "Rating: [[5]]") as base_url:
        j = LLMJudgeConfig(model="m", base_url=base_url, api_key_env="", concurrency=1,
                           max_retries=0, timeout_s=10)  # fmt: skip
        e, cache = endpoint_of(j), tmp_path / "mt_bench.jsonl"
        judge_all(e, j, requests(2), cache, "mt_bench")
        lines = cache.read_text().splitlines()
        cache.write_text(lines[0] + "\n" + lines[1][:-9])  # the second cut by a kill
        _, cost = judge_all(e, j, requests(2), cache, "mt_bench")
        assert (cost["judge_calls"], cost["judge_cached"]) == (1, 1)
        _, cost = judge_all(e, j, requests(2), cache, "mt_bench")
    assert (cost["judge_calls"], cost["judge_cached"]) == (0, 2)
    assert len(read_cache(cache)) == 2 and cache.read_text().endswith("}\n")


# --- a judge that answers garbage, a cache that was damaged -----------------------------------------

ANSWER = {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
          "choices": [{"index": 0, "finish_reason": "stop",
                       "message": {"role": "assistant", "content": "Rating: [[5]]"}}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}  # fmt: skip
MODELS = {"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "x"}]}


@pytest.fixture
def stub_judge():
    """`stub_judge(answer, models=...)`: an OpenAI-compatible endpoint on 127.0.0.1 whose
    /models answers `models` and whose chat completions answer ANSWER twice, then `answer`
    (bytes, its content type and, if not 200, its HTTP status) — as a proxy, a login page or
    another API would."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    servers = []

    def start(answer: tuple, models: tuple[bytes, str] | None = None) -> str:
        calls = []

        class Handler(BaseHTTPRequestHandler):
            def reply(self, body: bytes, kind: str, status: int = 200) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self.reply(*(models or (json.dumps(MODELS).encode(), "application/json")))

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                calls.append(1)
                good = (json.dumps(ANSWER).encode(), "application/json")
                self.reply(*(good if len(calls) <= 2 else answer))

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield start
    for server in servers:
        server.shutdown()


JSON = "application/json"


@contextlib.contextmanager
def judging(content_of):
    """An OpenAI-compatible judge on 127.0.0.1 whose every chat completion's content is
    `content_of(the last message's text)`; yields its base URL."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Judge(BaseHTTPRequestHandler):
        def do_GET(self):
            self.reply(MODELS)

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            message = {"role": "assistant", "content": content_of(body["messages"][-1]["content"])}
            self.reply({**ANSWER, "choices": [{**ANSWER["choices"][0], "message": message}]})

        def reply(self, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", JSON)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        ((b'{"choices": [', JSON), "JSONDecodeError"),
        ((b"<html><body>Sign in to continue</body></html>", "text/html"), "<html><body>Sign in"),
        ((b'{"choices": []}', JSON), "IndexError"),
        ((b'{"choices": null}', JSON), "TypeError"),
        (
            (
                json.dumps(
                    {**ANSWER, "usage": {"prompt_tokens": "3", "completion_tokens": "2"}}
                ).encode(),
                JSON,
            ),
            "token counts ('3', '2')",
        ),  # fmt: skip
        ((b"[1, 2]", JSON), ""),
    ],
    ids=[
        "malformed JSON",
        "an HTML page",
        "no choices",
        "null choices",
        "counts of text",
        "a list",
    ],
)
def test_a_judge_answering_what_is_no_chat_completion_ends_in_one_line_keeping_its_judgments(
    stub_judge, tmp_path, answer, said
):
    """HTTP 200 with what is not a chat completion: one line naming the judge and what came
    back, exit 3; the two judgments made before it are kept, and a re-run asks for the rest."""
    j = LLMJudgeConfig(model="m", base_url=stub_judge(answer), api_key_env="", concurrency=1,
                       max_retries=0, timeout_s=10)  # fmt: skip
    endpoint, cache = endpoint_of(j), tmp_path / "mt_bench.jsonl"
    require_reachable(endpoint, j, "mt_bench")
    with pytest.raises(EnvironmentFailure) as failed:
        judge_all(endpoint, j, requests(4), cache, "mt_bench")
    message = str(failed.value)
    assert "\n" not in message and failed.value.exit_code == EXIT_ENVIRONMENT
    assert message.startswith(f"mt_bench: the judge {endpoint.label} answered what is not a chat")
    assert said in message and "after 2 of 4 judgments; they are kept in" in message
    assert [j.text for j in read_cache(cache).values()] == ["Rating: [[5]]"] * 2


def test_a_judge_that_refuses_the_system_turn_names_the_setting_not_a_rerun(stub_judge, tmp_path):
    """A served template's refusal of the system turn (vLLM answers 400 with the template's own
    words) fails the same way on every run: the line names eval.llm_judge.system_turn=false,
    exit 1, and the judgments made before it are kept."""
    refusal = {"error": {"message": "Conversation roles must alternate user/assistant/user/"
                         "assistant/...", "type": "BadRequestError", "code": 400}}  # fmt: skip
    answer = (json.dumps(refusal).encode(), "application/json", 400)
    j = LLMJudgeConfig(model="m", base_url=stub_judge(answer), api_key_env="", concurrency=1,
                       max_retries=0, timeout_s=10)  # fmt: skip
    endpoint, cache = endpoint_of(j), tmp_path / "mt_bench.jsonl"
    with pytest.raises(StageError) as failed:
        judge_all(endpoint, j, requests(4), cache, "mt_bench")
    message = str(failed.value)
    assert "\n" not in message and failed.value.exit_code == EXIT_STAGE_ERROR
    assert message.endswith("its chat template takes no system turn (eval.llm_judge.system_turn="
                            "false puts the system prompt in the first user turn)")  # fmt: skip
    assert "run the command again" not in message and "after 2 of 4 judgments" in message
    assert failed.value.overrides() == "eval.llm_judge.system_turn=false"
    assert len(read_cache(cache)) == 2


@pytest.mark.parametrize(
    "silent",
    ["", None, "Both answers are fine.", "Rating: [[ten]]"],
    ids=["empty", "null", "no rating", "a rating that does not parse"],
)
def test_a_judgment_without_a_verdict_is_asked_again_by_the_next_run_not_served_as_final(
    tmp_path, silent
):
    """A judge that says nothing usable for two of four requests; fixed, the next run asks
    those two again (the two rated ones come from the cache) instead of reading the empty
    judgments back."""
    from src.evaluation.mt_bench import parse_rating

    contents = ["Rating: [[5]]", "Rating: [[5]]", silent, silent]
    rated = lambda text: parse_rating(text) is not None  # noqa: E731
    # fixed once emptied
    with judging(lambda _: contents.pop(0) if contents else "Rating: [[7]]") as base_url:
        j = LLMJudgeConfig(model="m", base_url=base_url, api_key_env="", concurrency=1,
                           max_retries=0, timeout_s=10)  # fmt: skip
        endpoint, cache = endpoint_of(j), tmp_path / "mt_bench.jsonl"
        first, cost = judge_all(endpoint, j, requests(4), cache, "mt_bench", final=rated)
        assert [rated(x.text) for x in first.values()] == [True, True, False, False]
        assert cost["judge_calls"] == 4
        again, cost = judge_all(endpoint, j, requests(4), cache, "mt_bench", final=rated)
    assert (cost["judge_calls"], cost["judge_cached"]) == (2, 2)
    assert [x.text for x in again.values()] == ["Rating: [[5]]"] * 2 + ["Rating: [[7]]"] * 2


def test_a_benchmark_without_one_verdict_ends_the_eval_in_one_line(tmp_path):
    """Not a figure of none with exit 0: one line naming the benchmark, the judge and what it
    said, exit 3; one verdict among them is enough to score."""
    from src.evaluation.benchmarks import require_a_verdict

    endpoint = endpoint_of(LLMJudgeConfig(model="m", base_url="http://j:8000/v1", api_key_env=""))
    cache = tmp_path / "arena_hard.jsonl"
    with pytest.raises(EnvironmentFailure) as failed:
        require_a_verdict("arena_hard", endpoint, ["I like both.", ""], 0, cache)
    said = str(failed.value)
    assert said.startswith(f"arena_hard: none of the 2 judgments by {endpoint.label} holds a ")
    assert "'I like both.'" in said and str(cache) in said and "\n" not in said
    assert failed.value.exit_code == EXIT_ENVIRONMENT
    require_a_verdict("arena_hard", endpoint, ["I like both.", "[[A>B]]"], 1, cache)
    require_a_verdict("arena_hard", endpoint, [], 0, cache)  # nothing was asked


def test_a_list_of_models_that_is_not_one_is_refused_in_one_line(stub_judge):
    for models in ((b"{not json", JSON), (b"<html>Proxy error</html>", "text/html")):
        j = LLMJudgeConfig(model="m", base_url=stub_judge((b"", JSON), models), api_key_env="")
        with pytest.raises(EnvironmentFailure, match="whose list of models is not one") as err:
            require_reachable(endpoint_of(j), j, "arena_hard")
        assert "\n" not in str(err.value)


def test_a_damaged_cache_line_is_named_left_out_and_judged_again(tmp_path, capsys):
    """Bytes that are not UTF-8, a text that is null or a number, a count that is text: each
    line is named with its number and left out; the whole lines around them are read."""
    e = endpoint_of(LLMJudgeConfig(model="m", base_url="http://127.0.0.1:1/v1", api_key_env=""))
    first, *damaged, last = requests(6)

    def line(request, **fields) -> bytes:
        row = {"id": request_id(e, request), "key": request.key, "text": "[[5]]",
               "prompt_tokens": 3, "completion_tokens": 2, **fields}  # fmt: skip
        return json.dumps(row).encode() + b"\n"

    cache = tmp_path / "mt_bench.jsonl"
    cache.write_bytes(
        line(first) + b"\xff\xfe not utf-8\n" + line(damaged[0], text=None)
        + line(damaged[1], text=7) + line(damaged[2], prompt_tokens="3") + b"null\n" + line(last)
    )  # fmt: skip
    assert set(read_cache(cache)) == {request_id(e, first), request_id(e, last)}
    named = [ln for ln in capsys.readouterr().err.splitlines() if "not a judgment" in ln]
    assert [ln.split(": not")[0] for ln in named] == [
        f"[eval] {cache}:{n}" for n in (2, 3, 4, 5, 6)
    ]


# --- a served judge ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_dir):
    """The tiny policy served as the judge `tiny-judge` by the stage's own server code."""
    pytest.importorskip("vllm", reason="vLLM is not installed here (make install-vllm adds it)")
    from src.evaluation.judge_server import served_judge

    j = LLMJudgeConfig(
        model="tiny-judge",
        serve=str(tiny_dir / "tiny-mistral"),
        api_key_env="",
        concurrency=2,
    )
    folder = tmp_path_factory.mktemp("served")
    with served_judge(j, folder, on_cpu=True) as server:
        yield j, endpoint_of(j, base_url=server.url, pid=server.pid), folder


@pytest.mark.slow
@pytest.mark.vllm
def test_a_served_judge_answers_and_its_judgments_are_cached(served, tmp_path):
    j, endpoint, folder = served
    require_reachable(endpoint, j, "mt_bench")
    asked = requests(4)
    cache = tmp_path / "mt_bench.jsonl"
    judged, cost = judge_all(endpoint, j, asked, cache, "mt_bench")
    assert set(judged) == {r.key for r in asked}
    assert all(judgment.text and judgment.completion_tokens > 0 for judgment in judged.values())
    assert cost["judge_calls"] == 4 and cost["judge_cached"] == 0
    assert cost["judge_completion_tokens"] == sum(x.completion_tokens for x in judged.values())
    assert len(cache.read_text().splitlines()) == 4
    again, cost = judge_all(endpoint, j, asked, cache, "mt_bench")
    assert cost == {
        "judge_calls": 0,
        "judge_cached": 4,
        "judge_prompt_tokens": 0,
        "judge_completion_tokens": 0,
    }
    assert {k: v.text for k, v in again.items()} == {k: v.text for k, v in judged.items()}
    assert "POST /v1/chat/completions" in (folder / "judge_server.log").read_text()


@pytest.mark.slow
@pytest.mark.vllm
def test_mt_bench_through_an_openai_compatible_judge_that_never_rates_ends_in_one_line(
    served, tmp_path
):
    """Two MT-Bench questions graded by a judge on an OpenAI-compatible server of one's own
    (the module's, as docs/stages.md configures one): both turns answered through the stage's
    parts, four judgments asked; the tiny policy as judge writes toy sentences, never a rating,
    so the eval ends in one line (exit 3) rather than with a score of none, the judgments kept
    and asked again by the next run, not served from the cache as final. (A judge that rates,
    served by the stage itself, grades tests/pipeline/test_learning.py's MT-Bench.)"""
    from src.stages.eval import answerer

    _, endpoint, _ = served
    cfg = compose_cfg(
        *SMALL,
        f"paths.root={tmp_path / 'runs'}",
        "eval.benchmarks=[mt_bench]",
        "data.mt_bench=/unread",
        "eval.llm_judge.serve=null",  # the tiny preset serves tiny-chat-judge
        f"eval.llm_judge.base_url={endpoint.base_url}",
        "eval.llm_judge.model=tiny-judge",
        "eval.llm_judge.api_key_env=''",
        "eval.llm_judge.system_turn=false",  # Mistral's template refuses a system turn
        "eval.max_new_tokens=16",
    )
    require_reachable(endpoint_of(cfg.eval.llm_judge), cfg.eval.llm_judge, "mt_bench")
    data = {Benchmark.mt_bench: two_questions(tmp_path / "fastchat")}
    policy = answerer(cfg, "base")
    stage = tmp_path / "eval"
    for run in (1, 2):
        with pytest.raises(EnvironmentFailure) as failed:
            benchmarks.run(cfg, policy, data, stage)
        said = str(failed.value)
        assert said.startswith("mt_bench: none of the 4 judgments by tiny-judge@local holds a")
        assert "\n" not in said and failed.value.exit_code == EXIT_ENVIRONMENT
        (cache,) = (tmp_path / "runs").rglob("mt_bench.jsonl")  # the judge's cache
        assert len(cache.read_text().splitlines()) == 4 * run  # asked again, appended
    second_turns = [
        json.loads(line)
        for path in (tmp_path / "runs" / "eval_answers").rglob("answers-*.jsonl")
        for line in path.read_text().splitlines()
        if json.loads(line)["prompt_id"].endswith("-2")
    ]
    assert {r["instruction"] for r in second_turns} == {WRITING["turns"][1], MATH["turns"][1]}


@pytest.mark.slow
@pytest.mark.vllm
def test_a_model_the_endpoint_does_not_serve_is_refused_in_one_line(served):
    j, endpoint, _ = served
    wrong = replace(endpoint, model="gpt-4")
    with pytest.raises(
        EnvironmentFailure, match=r"which does not serve it \(it serves: tiny-judge\)"
    ):
        require_reachable(wrong, j, "arena_hard")


CHAT_SERVER = (
    "import http.server, json, sys\n"
    "class Judge(http.server.BaseHTTPRequestHandler):\n"
    "    def reply(self, body):\n"
    "        data = json.dumps(body).encode()\n"
    "        self.send_response(200)\n"
    "        self.send_header('Content-Type', 'application/json')\n"
    "        self.send_header('Content-Length', str(len(data)))\n"
    "        self.end_headers()\n"
    "        self.wfile.write(data)\n"
    "    def do_GET(self):\n"
    "        self.reply(json.loads(sys.argv[2]))\n"
    "    def do_POST(self):\n"
    "        self.rfile.read(int(self.headers['Content-Length']))\n"
    "        self.reply(json.loads(sys.argv[3]))\n"
    "    def log_message(self, *args):\n"
    "        pass\n"
    "http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), Judge).serve_forever()\n"
)


STANDING_JUDGE = r"""
import sys, time
from pathlib import Path
import src.evaluation.judge_server as judge_server
from src.config import LLMJudgeConfig

chat_server, models, answer = sys.argv[2:5]
judge_server.server_command = lambda j, port, on_cpu: [
    sys.executable, "-c", chat_server, str(port), models, answer
]
j = LLMJudgeConfig(model="m", serve="/judges/stand-in", api_key_env="", start_timeout_s=60)
with judge_server.served_judge(j, Path(sys.argv[1]), on_cpu=True):
    print("serving", flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
def test_a_stage_killed_outright_takes_the_judge_it_serves_with_it(tmp_path):
    """kill -9 of the process serving a judge: the watchdog ends the server (its whole tree),
    which otherwise stayed serving for nobody. (A stand-in server: the watchdog is vLLM's.)"""
    stand_in = [CHAT_SERVER, json.dumps(MODELS), json.dumps(ANSWER)]
    stage = subprocess.Popen([sys.executable, "-c", STANDING_JUDGE, str(tmp_path), *stand_in],
                             cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert stage.stdout.readline().strip() == "serving"
    (server,) = [p for p in psutil.Process(stage.pid).children() if "-c" in p.cmdline()]
    os.kill(stage.pid, signal.SIGKILL)
    stage.wait()
    gone, alive = psutil.wait_procs([server], timeout=20)
    assert server in gone and not alive, "the judge's server outlived its stage"


@pytest.mark.slow
def test_a_served_judge_stopped_mid_benchmark_ends_the_run_in_one_line(tmp_path, monkeypatch):
    """SIGSTOP of the judge the stage serves (a frozen process, a debugger left attached): its
    requests would each wait out timeout_s (600 s) and the run say nothing; watched as the
    generate stage's engine is, it ends in one line once stopped for ENGINE_STOPPED_S, and the
    server goes. (A stand-in server: the watch is the stage's.)"""
    from src.evaluation.judge_server import free_port
    from src.generation import vllm_processes

    monkeypatch.setattr(vllm_processes, "ENGINE_STOPPED_S", 1.0)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", CHAT_SERVER, str(port), json.dumps(MODELS), json.dumps(ANSWER)],
        start_new_session=True,
    )
    try:
        j = LLMJudgeConfig(model="m", base_url=f"http://127.0.0.1:{port}/v1", api_key_env="",
                           concurrency=2, max_retries=0, timeout_s=600)  # fmt: skip
        endpoint = replace(endpoint_of(j), pid=server.pid)
        deadline = time.monotonic() + 30
        while True:  # until it answers
            try:
                require_reachable(endpoint, j, "mt_bench")
                break
            except EnvironmentFailure:
                assert time.monotonic() < deadline, "the stand-in judge did not start"
                time.sleep(0.2)
        os.kill(server.pid, signal.SIGSTOP)
        with pytest.raises(EnvironmentFailure) as failed:  # no watch: 600 s a request, in silence
            judge_all(endpoint, j, requests(4), tmp_path / "mt_bench.jsonl", "mt_bench")
        said = str(failed.value)
        assert said.startswith(f"mt_bench: the judge {endpoint.label} stopped answering: the ")
        assert f"(pid {server.pid}) is stopped (state T)" in said and "after 0 of 4" in said
        assert server.wait(timeout=10) == -signal.SIGKILL  # the stage's server: it went
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


KILLED_RUN = """
import json, sys
from pathlib import Path
from src.config import LLMJudgeConfig
from src.evaluation.judge_client import Endpoint, judge_all
from src.evaluation.judging import JudgeRequest
n, endpoint, cache = int(sys.argv[1]), Endpoint(**json.loads(sys.argv[2])), Path(sys.argv[3])
asked = [
    JudgeRequest(f"test/{i}", (("user", f"Write a plan for the budget number {i}."),), 0.0, 48)
    for i in range(n)
]
judge_all(endpoint, LLMJudgeConfig(api_key_env="", concurrency=1), asked, cache, "mt_bench")
"""


def wait_for_lines(path: Path, n: int, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.is_file() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {n} lines")


@pytest.mark.slow
@pytest.mark.vllm
def test_a_run_killed_mid_benchmark_pays_only_for_the_rest_and_judges_the_same(served, tmp_path):
    j, endpoint, _ = served
    n = 12
    asked = [replace(r, max_tokens=48) for r in requests(n)]
    cache = tmp_path / "killed.jsonl"
    run = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(n), json.dumps(asdict(endpoint)), str(cache)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stderr=subprocess.DEVNULL,
    )
    wait_for_lines(cache, 3)
    run.send_signal(signal.SIGKILL)
    run.wait()
    kept = len(read_cache(cache))
    assert 3 <= kept < n, kept
    one_go = tmp_path / "one-go.jsonl"
    uninterrupted, _ = judge_all(endpoint, replace(j, concurrency=1), asked, one_go, "mt_bench")
    resumed, cost = judge_all(endpoint, replace(j, concurrency=1), asked, cache, "mt_bench")
    assert cost["judge_cached"] == kept and cost["judge_calls"] == n - kept
    assert {k: v.text for k, v in resumed.items()} == {k: v.text for k, v in uninterrupted.items()}


@pytest.mark.slow
@pytest.mark.vllm
def test_a_judge_that_dies_mid_benchmark_ends_in_one_line_keeping_what_it_made(served, tmp_path):
    """Last in the module: it stops the served judge."""
    j, endpoint, _ = served
    n = 40
    asked = [replace(r, max_tokens=64) for r in requests(n)]
    cache = tmp_path / "dies.jsonl"
    port = endpoint.base_url.rsplit(":", 1)[1].split("/")[0]
    server = next(
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if "vllm.entrypoints.openai.api_server" in (p.info["cmdline"] or [])
        and port in (p.info["cmdline"] or [])
    )

    def kill_after_three():
        wait_for_lines(cache, 3)
        os.killpg(os.getpgid(server), signal.SIGKILL)

    killer = threading.Thread(target=kill_after_three)
    killer.start()
    no_retry = replace(j, concurrency=1, max_retries=0, timeout_s=30)
    with pytest.raises(EnvironmentFailure) as err:
        judge_all(endpoint, no_retry, asked, cache, "mt_bench")
    killer.join()
    message = str(err.value)
    kept = len(read_cache(cache))
    assert message.startswith("mt_bench: the judge tiny-judge@local stopped answering ("), message
    assert f") after {kept} of {n} judgments; they are kept in {cache}" in message
    assert "run the command again to judge the rest" in message and "\n" not in message


def test_arena_hard_v2_plays_each_category_against_its_own_baseline_and_never_pools(tmp_path):
    """Graded through an OpenAI-compatible judge that prefers the answer saying "good", else
    the baseline's: the hard prompts' games see o3-mini's answers, the creative ones gemini's;
    the figure is hard_prompt's, creative writing's beside it with its own baseline."""
    from tests.support.fastchat import write_lines

    seen: list[str] = []

    def verdict(text: str) -> str:
        first = text.split("<|The Start of Assistant A's Answer|>")[1].split("<|The End")[0]
        seen.append(text)
        better = "good" if "good" in text else "answers"  # else the baseline's (answers)
        return f"My final verdict is: {'[[A>>B]]' if better in first else '[[B>>A]]'}"

    questions = [
        {"uid": f"h{i}", "category": "hard_prompt", "prompt": "Prove it."} for i in range(3)
    ]
    questions += [{"uid": f"c{i}", "category": "creative_writing", "prompt": "A poem."}
                  for i in range(2)]  # fmt: skip
    write_lines(tmp_path / "arena" / "question.jsonl", questions)
    for model in ("o3-mini-2025-01-31", "gemini-2.0-flash-001"):
        write_lines(tmp_path / "arena" / "model_answer" / f"{model}.jsonl", [
            {"uid": q["uid"], "model": model, "messages": [{"content": {"answer": f"{model} answers"}}]}
            for q in questions])  # fmt: skip
    with judging(verdict) as base_url:
        cfg = compose_cfg(
            *SMALL, "eval.benchmarks=[arena_hard]", f"data.arena_hard={tmp_path / 'arena'}",
            "eval.arena_hard_baseline=null", "eval.llm_judge.serve=null", "eval.llm_judge.model=m",
            f"eval.llm_judge.base_url={base_url}",
            "eval.llm_judge.api_key_env=''", f"paths.root={tmp_path / 'runs'}",
        )  # fmt: skip
        data = benchmarks.read_data(cfg)[Benchmark.arena_hard]
        answered = {q["uid"]: "a good answer" if q["uid"][0] == "h" else "an answer"
                    for q in questions}  # fmt: skip
        result = benchmarks.grade_arena_hard(cfg, endpoint_of(cfg.eval.llm_judge), data, answered)
    assert len(seen) == 10, "two games a question"
    assert all("o3-mini" in t for t in seen if "Prove it." in t)
    assert all("gemini-2.0-flash-001" in t and "o3-mini" not in t for t in seen if "A poem." in t)
    assert (result["category"], result["baseline"], result["win_rate"]) == (
        "hard_prompt", "o3-mini-2025-01-31", 1.0)  # fmt: skip
    assert (result["questions"], result["asked"]) == (3, 3)
    creative = result["categories"]["creative_writing"]
    assert (creative["baseline"], creative["win_rate"], creative["questions"]) == (
        "gemini-2.0-flash-001", 0.0, 2)  # fmt: skip
