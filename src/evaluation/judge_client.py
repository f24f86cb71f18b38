"""The chat judge of MT-Bench and Arena-Hard (`eval.llm_judge`): any OpenAI-compatible endpoint,
its judgments cached and resumable.

- Before any answer is made, `require_reachable` says in one line (exit 3) what stops the judge:
  no key, an endpoint that does not answer, a model it does not serve.
- `judge_all` sends what is not cached yet, `concurrency` requests at a time, and appends each
  judgment to the cache as it comes back; a run killed mid-benchmark pays for none of them
  again. The count of calls (and of those cached) is printed before they start, the tokens
  after.

The cache: `<paths.root>/eval_judgments/<judge label>/<benchmark>.jsonl`, one line per judgment,
keyed by the judge's model and endpoint and everything it is sent (a request's messages,
temperature and token limit), so a changed answer or prompt is judged again and two runs that
send the same request share its judgment. A line cut short by a kill is ignored on reading.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from src.config import LLMJudgeConfig
from src.core import locks
from src.core.errors import EnvironmentFailure, StageError
from src.core.policy import weights_signature
from src.evaluation.judging import JudgeRequest
from src.generation.vllm_processes import LIVENESS_EVERY_S, Waiting

OPENAI_BASE_URL = "https://api.openai.com/v1"
CACHE_DIR = "eval_judgments"


@dataclass(frozen=True)
class Endpoint:
    """Where the judge answers: `model` at `base_url`, with `key` (None: no key needed)."""

    model: str
    base_url: str
    key: str | None
    # its chat template takes no system turn (Mistral-Instruct's): the system prompt opens the
    # first user turn instead
    merge_system: bool = False
    # what its judgments are cached under besides the model: the URL, or for a judge this stage
    # serves (on a new port each time) its weights' signature (a rebuilt judge judges again)
    served: str | None = None
    # the process of a judge this stage serves: one stopped while a judgment waits ends the run
    pid: int | None = None

    @property
    def label(self) -> str:
        """What names the judge in every record: its model, and where it is served unless that
        is OpenAI's API (`gpt-4` there and a local `gpt-4` are not one judge)."""
        if self.base_url == OPENAI_BASE_URL:
            return self.model
        host = re.sub(r"^https?://", "", self.base_url).split("/")[0]
        return f"{self.model}@{'local' if host.startswith(('127.0.0.1', 'localhost')) else host}"


@dataclass
class Judgment:
    text: str
    prompt_tokens: int
    completion_tokens: int


def endpoint_of(
    j: LLMJudgeConfig,
    base_url: str | None = None,
    merge_system: bool = False,
    pid: int | None = None,
) -> Endpoint:
    """The endpoint `j` names (`base_url`, `pid`: where this stage serves it, for `serve`)."""
    url = base_url or j.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL
    key = os.environ.get(j.api_key_env) if j.api_key_env else None
    served = weights_signature(j.serve, None) if base_url and j.serve else None
    return Endpoint(j.name, url.rstrip("/"), key, merge_system, served, pid)


def sent_messages(endpoint: Endpoint, request: JudgeRequest) -> list[dict[str, str]]:
    """The chat messages of `request` as `endpoint` takes them."""
    messages = [{"role": role, "content": content} for role, content in request.messages]
    if endpoint.merge_system and len(messages) > 1 and messages[0]["role"] == "system":
        system, first, *rest = messages
        merged = f"{system['content']}\n\n{first['content']}"
        messages = [{"role": first["role"], "content": merged}, *rest]
    return messages


def client_of(endpoint: Endpoint, j: LLMJudgeConfig):
    from openai import OpenAI

    # a served judge takes any key; the client refuses to start without one
    return OpenAI(
        base_url=endpoint.base_url,
        api_key=endpoint.key or "none",
        timeout=j.timeout_s,
        max_retries=j.max_retries,
    )


def require_reachable(endpoint: Endpoint, j: LLMJudgeConfig, benchmarks: str) -> None:
    """Refuse, in one line (exit 3), a judge that cannot answer: no key for OpenAI's API or for
    an endpoint `api_key_env` says needs one, no answer from the endpoint, or no `model` in the
    models it serves."""
    import openai

    judge = f"{benchmarks} are judged by {endpoint.model} at {endpoint.base_url} (eval.llm_judge)"
    if j.api_key_env and not endpoint.key:
        raise EnvironmentFailure(
            f"{judge}, but {j.api_key_env} is not set: set it, or name another judge "
            "(eval.llm_judge.base_url and .model, or .serve: a model served here)"
        )
    try:
        served = [m.id for m in client_of(endpoint, j).with_options(max_retries=0).models.list()]
        if not all(isinstance(m, str) for m in served):
            raise TypeError(f"model ids {served[:3]!r}")
    except openai.AuthenticationError as err:
        raise EnvironmentFailure(
            f"{judge}, which refuses the key in {j.api_key_env}: {err}"
        ) from err
    except openai.APIError as err:
        raise EnvironmentFailure(f"{judge}, which does not answer: {err}") from err
    except UNREADABLE as err:  # a proxy's or a login page's HTML, malformed JSON, another API
        raise EnvironmentFailure(
            f"{judge}, whose list of models is not one ({type(err).__name__}: {brief(err)})"
        ) from err
    if endpoint.model not in served:
        raise EnvironmentFailure(
            f"{judge}, which does not serve it (it serves: {', '.join(sorted(served)[:8])}): "
            "set eval.llm_judge.model to one of those"
        )


def request_id(endpoint: Endpoint, request: JudgeRequest) -> str:
    """What a judgment is cached under: the judge (its model, and its URL or the model served
    here) and the request exactly as sent."""
    where = endpoint.served or endpoint.base_url
    sent = sent_messages(endpoint, request)
    payload = [endpoint.model, where, sent, request.temperature, request.max_tokens]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def read_cache(path: Path) -> dict[str, Judgment]:
    """The judgments in `path` by request id. A line that is no judgment (cut short by a kill
    while writing, bytes that are not UTF-8, a text or a count of another type) is left out, and
    named unless it is the last line cut short: its request is judged again."""
    cached: dict[str, Judgment] = {}
    if not path.is_file():
        return cached
    lines = path.read_bytes().split(b"\n")
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
            judgment = Judgment(row["text"], row["prompt_tokens"], row["completion_tokens"])
            if not (isinstance(row["id"], str) and isinstance(judgment.text, str)) or not all(
                type(n) is int for n in (judgment.prompt_tokens, judgment.completion_tokens)
            ):
                raise TypeError("a field of another type")
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
            if number < len(lines) or isinstance(err, (UnicodeDecodeError, KeyError, TypeError)):
                print(
                    f"[eval] {path}:{number}: not a judgment ({type(err).__name__}): left out, "
                    "its request is judged again",
                    file=sys.stderr,
                )
            continue
        cached[row["id"]] = judgment
    return cached


def drop_cut_line(path: Path) -> None:
    """A last line cut short by a kill while it was written (no newline at its end) goes, so that
    the next judgment appended starts a line of its own rather than joining it, unreadable."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
        print(f"[eval] {path}: its last line was cut short by a stopped run: dropped",
              file=sys.stderr)  # fmt: skip


def cache_path(root: str, endpoint: Endpoint, benchmark: str) -> Path:
    folder = re.sub(r"[^A-Za-z0-9._@-]+", "_", endpoint.label)
    return Path(root) / CACHE_DIR / folder / f"{benchmark}.jsonl"


def judge_all(
    endpoint: Endpoint,
    j: LLMJudgeConfig,
    requests: list[JudgeRequest],
    cache: Path,
    benchmark: str,
    final: Callable[[str], bool] = lambda text: True,
) -> tuple[dict[str, Judgment], dict]:
    """Every request's judgment, by request key, and what it cost (calls made, cached, tokens).
    The judgments come from the cache where it has them and they are `final` (a judgment
    without a verdict is not: each run asks for it again, a judge fixed since included); the
    rest from the endpoint, each appended to the cache as it arrives. A judge that stops
    answering ends the stage with one line (exit 3): the judgments made are kept, and a re-run
    pays only for the rest."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    with locks.writing(cache.parent, wait=True):  # two runs sharing a judge share its cache
        cached = read_cache(cache)
        drop_cut_line(cache)
        ids = {r.key: request_id(endpoint, r) for r in requests}
        kept = {k: v for k, v in cached.items() if final(v.text)}
        todo = [r for r in requests if ids[r.key] not in kept]
        unfinished = sum(ids[r.key] in cached for r in todo)
        again = f" ({unfinished} cached without a verdict, asked again)" if unfinished else ""
        print(
            f"[eval] {benchmark}: {len(requests)} judgments by {endpoint.label}, "
            f"{len(requests) - len(todo)} cached, {len(todo)} to request{again}",
            file=sys.stderr,
        )
        made = request_each(endpoint, j, todo, cache, ids, benchmark)
    judgments = {**kept, **made}
    cost = {
        "judge_calls": len(todo),
        "judge_cached": len(requests) - len(todo),
        "judge_prompt_tokens": sum(m.prompt_tokens for m in made.values()),
        "judge_completion_tokens": sum(m.completion_tokens for m in made.values()),
    }
    if todo:
        print(
            f"[eval] {benchmark}: {len(todo)} judge calls, {cost['judge_prompt_tokens']:,} prompt "
            f"and {cost['judge_completion_tokens']:,} completion tokens",
            file=sys.stderr,
        )
    return {r.key: judgments[ids[r.key]] for r in requests}, cost


def request_each(
    endpoint: Endpoint,
    j: LLMJudgeConfig,
    todo: list[JudgeRequest],
    cache: Path,
    ids: dict[str, str],
    benchmark: str,
) -> dict[str, Judgment]:
    import openai

    client = client_of(endpoint, j)
    made: dict[str, Judgment] = {}
    started, last = time.monotonic(), 0.0
    with (
        ThreadPoolExecutor(j.concurrency) as pool,
        cache.open("a", encoding="utf-8") as out,
    ):
        pending = {pool.submit(ask, client, endpoint, r): r for r in todo[: j.concurrency]}
        queued = iter(todo[j.concurrency :])
        waiting = None if endpoint.pid is None else Waiting([endpoint.pid])
        try:
            while pending:
                done, _ = wait(pending, timeout=LIVENESS_EVERY_S, return_when=FIRST_COMPLETED)
                if waiting is not None and not done and (stalled := waiting.stalled()):
                    raise JudgeStalled(stalled.replace("vLLM's engine", "the judge's server"))
                if done and waiting is not None:
                    waiting = Waiting([endpoint.pid])
                for future in done:
                    request = pending.pop(future)
                    judgment = future.result()
                    made[ids[request.key]] = judgment
                    row = {"id": ids[request.key], "key": request.key, **judgment.__dict__}
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                    out.flush()
                    for following in take(queued, 1):
                        pending[pool.submit(ask, client, endpoint, following)] = following
                if time.monotonic() - last > 30 or not pending:
                    last = time.monotonic()
                    print(
                        f"[eval] {benchmark}: {len(made)}/{len(todo)} judgments "
                        f"({time.monotonic() - started:.0f} s)",
                        file=sys.stderr,
                    )
        except (openai.APIError, UnreadableAnswer, JudgeStalled) as err:
            for future in pending:
                future.cancel()
            os.fsync(out.fileno())
            if isinstance(err, JudgeStalled):
                # its requests would wait out eval.llm_judge.timeout_s, and the pool for them:
                # the server is this stage's, and it goes (what served_judge would do after)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(endpoint.pid, signal.SIGKILL)
                what = f"stopped answering: {err}"
            elif isinstance(err, UnreadableAnswer):
                what = f"answered what is not a chat completion ({err})"
            elif isinstance(err, openai.BadRequestError):
                what = f"refused a request ({err})"
            else:
                what = f"stopped answering ({err})"
            kept = f"after {len(made)} of {len(todo)} judgments; they are kept in {cache}"
            if (isinstance(err, openai.BadRequestError) and not endpoint.merge_system
                    and SYSTEM_TURN_REFUSED.search(str(err))):  # fmt: skip
                # asked again the same way it refuses again: the setting is what changes it
                raise StageError(
                    f"{benchmark}: the judge {endpoint.label} {what} {kept}: its chat template "
                    "takes no system turn (eval.llm_judge.system_turn=false puts the system "
                    "prompt in the first user turn)",
                    fix="eval.llm_judge.system_turn=false",
                ) from err
            raise EnvironmentFailure(
                f"{benchmark}: the judge {endpoint.label} {what} {kept}: run the command again "
                "to judge the rest"
            ) from err
        os.fsync(out.fileno())
    return made


def take(items: Iterable, n: int) -> list:
    return [x for _, x in zip(range(n), items, strict=False)]


# What reading an answer that is not a chat completion raises: malformed JSON (a ValueError),
# an HTML page (a str, with no attributes), no choices, fields of other types
UNREADABLE = (ValueError, AttributeError, IndexError, KeyError, TypeError)


# What a server says when the judge's chat template refuses the system turn it was sent: the
# template's own raise_exception (Mistral-Instruct: "Conversation roles must alternate
# user/assistant/..."; Gemma: "System role not supported")
SYSTEM_TURN_REFUSED = re.compile(r"roles must alternate|system role", re.IGNORECASE)


class JudgeStalled(Exception):
    """The process of a judge this stage serves is stopped while judgments wait on it."""


class UnreadableAnswer(Exception):
    """The judge answered (HTTP 200) with what is not a chat completion."""


def brief(value: object) -> str:
    """The start of what came back, on one line."""
    return " ".join(str(value).split())[:80]


def ask(client, endpoint: Endpoint, request: JudgeRequest) -> Judgment:
    reply = None
    try:
        reply = client.chat.completions.create(
            model=endpoint.model,
            messages=sent_messages(endpoint, request),
            temperature=request.temperature,
            max_tokens=request.max_tokens,
        )
        text, usage = reply.choices[0].message.content, reply.usage
        counts = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
        if not (text is None or isinstance(text, str)) or not all(type(n) is int for n in counts):
            raise TypeError(f"content {brief(text)!r}, token counts {counts!r}")
    except UNREADABLE as err:
        raw = isinstance(reply, (str, bytes, list, dict))  # not parsed: what came back, as is
        said = reply if raw else err
        raise UnreadableAnswer(f"{type(err).__name__}: {brief(said)}") from err
    return Judgment(text or "", *counts)
