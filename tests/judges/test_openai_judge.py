"""The openai backend against a local OpenAI-protocol server that answers like vLLM.

The server runs in a thread on 127.0.0.1 and follows a script: each POST takes the next step
("ok", "slow", a status code), records the body, headers and arrival time, and tracks how many
requests are in flight at once.
"""
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from judges.prompts import JudgeRequest
from judges.openai_judge import OpenAIJudge


def chat_response(tokens, tops=None):
    """A vLLM-style chat completion whose content is the tokens joined; ``tops`` maps a token index
    to its top_logprobs as {token: probability}."""
    content = []
    for i, tok in enumerate(tokens):
        alts = (tops or {}).get(i, {tok: 1.0})
        content.append({"token": tok, "logprob": math.log(alts.get(tok, 1.0)),
                        "top_logprobs": [{"token": a, "logprob": math.log(p)} for a, p in alts.items()]})
    return {"id": "x", "object": "chat.completion", "model": "judge",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "".join(tokens)},
                         "logprobs": {"content": content}}]}


class Server:
    def __init__(self, port=0):
        self.script, self.default = [], ("ok", chat_response(["Score", ":", " ", "7"]))
        self.bodies, self.headers, self.arrivals = [], [], []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.bodies.append(body)
                    server.headers.append(dict(self.headers))
                    server.arrivals.append(time.monotonic())
                    step = server.script.pop(0) if server.script else server.default
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    kind, arg = step
                    if kind == "slow":
                        time.sleep(arg)
                        kind, arg = server.default
                    if kind == "status":
                        self._send(arg, {"error": {"message": f"boom {arg}"}})
                    else:
                        self._send(200, arg)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


def judge_for(server, **kw):
    params = dict(model="judge", timeout_s=5, max_attempts=3, backoff_s=0.01, jitter=0.0, concurrency=4)
    params.update(kw)
    return OpenAIJudge(server.url, **params)


def req(answer="Noise: 2/5", scale=(0, 10)):
    return JudgeRequest(system="grade", user="Ref: 2\n{answer_block}", answer=answer, scale=scale)


def test_generate_mode_parses_the_written_score_and_sends_a_chat_request(server):
    judge = judge_for(server, mode="generate", extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    verdict = judge.score([req()])[0]
    assert verdict.score == 7.0 and verdict.error is None
    body = server.bodies[0]
    assert body["model"] == "judge" and body["temperature"] == 0.0 and "logprobs" not in body
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "<<<ANSWER" in body["messages"][1]["content"]
    assert body["chat_template_kwargs"] == {"enable_thinking": False}


def test_logit_mode_takes_the_expected_value_over_top_logprobs(server):
    server.default = ("ok", chat_response(["Score", ":", " ", "7"], {3: {"7": 0.6, "8": 0.3, "x": 0.1}}))
    verdict = judge_for(server, mode="logit").score([req()])[0]
    assert verdict.score == pytest.approx((7 * 0.6 + 8 * 0.3) / 0.9)
    assert verdict.mass == pytest.approx(0.9)
    assert server.bodies[0]["logprobs"] is True and server.bodies[0]["top_logprobs"] == 20


def test_logit_mode_follows_a_ten_written_as_one_then_zero(server):
    tops = {2: {"1": 0.8, "9": 0.2}, 3: {"0": 0.75, ".": 0.25}}
    server.default = ("ok", chat_response(["Score:", " ", "1", "0"], tops))
    verdict = judge_for(server, mode="logit").score([req()])[0]
    assert verdict.score == pytest.approx(10 * 0.6 + 1 * 0.2 + 9 * 0.2)


SEVEN_OR_ONE = chat_response(["Score", ":", " ", "7"], {3: {"7": 0.6, "1": 0.3, "8": 0.1}})


def test_logit_mode_sends_a_branch_request_for_a_one_off_the_generated_path(server):
    # the judge wrote 7; "1" (30%) could go on to "10": the server is asked what follows "Score: 1"
    server.script = [("ok", SEVEN_OR_ONE), ("ok", chat_response(["0"], {0: {"0": 0.5, "5": 0.3, ".": 0.2}}))]
    judge = judge_for(server, mode="logit", concurrency=1)
    verdict = judge.score([req()])[0]
    p = {7: 0.6, 8: 0.1, 10: 0.3 * 0.5, 1: 0.3 * 0.2}  # "15" is off the scale; "1." ends at 1
    assert verdict.score == pytest.approx(sum(k * v for k, v in p.items()) / sum(p.values()))
    assert verdict.mass == pytest.approx(sum(p.values()))
    branch = server.bodies[1]
    assert branch["messages"][:-1] == server.bodies[0]["messages"]
    assert branch["messages"][-1] == {"role": "assistant", "content": "Score: 1"}
    assert branch["max_tokens"] == 1 and branch["continue_final_message"] is True
    assert branch["add_generation_prompt"] is False and branch["top_logprobs"] == 20
    assert judge.stats.as_dict()["branch_requests"] == 1 and len(server.bodies) == 2


def test_without_branch_requests_or_when_one_fails_a_one_off_the_path_counts_as_ending(server):
    expected = (7 * 0.6 + 1 * 0.3 + 8 * 0.1) / 1.0
    server.default = ("ok", SEVEN_OR_ONE)
    judge = judge_for(server, mode="logit", branch_requests=False)
    assert judge.score([req()])[0].score == pytest.approx(expected) and len(server.bodies) == 1
    server.script = [("ok", SEVEN_OR_ONE), ("status", 400)]  # the branch request is refused
    judge = judge_for(server, mode="logit", concurrency=1)
    assert judge.score([req("other")])[0].score == pytest.approx(expected)
    stats = judge.stats.as_dict()
    assert stats["branch_requests"] == stats["branch_failed"] == 1 and "failed" not in stats


def test_a_branch_request_that_times_out_fails_the_judgement_as_a_timeout(server):
    server.script = [("ok", SEVEN_OR_ONE), ("slow", 1.0), ("slow", 1.0)]
    judge = judge_for(server, mode="logit", concurrency=1, timeout_s=0.2, max_attempts=2)
    verdict = judge.score([req()])[0]
    assert verdict.score is None and verdict.error.startswith("timeout")  # not a quietly different score
    stats = judge.stats.as_dict()
    assert stats["failed/timeout"] == 1 and stats["retries"] == 1 and stats["branch_requests"] == 1
    assert "branch_failed" not in stats


def test_a_branch_request_on_the_completions_endpoint_extends_the_prompt(server):
    main = {"choices": [{"text": " 7", "logprobs": {"tokens": [" 7"], "top_logprobs": [{" 7": math.log(0.5), " 1": math.log(0.5)}]}}]}
    branch = {"choices": [{"text": "0", "logprobs": {"tokens": ["0"], "top_logprobs": [{"0": math.log(1.0)}]}}]}
    server.script = [("ok", main), ("ok", branch)]
    verdict = judge_for(server, endpoint="completions", mode="logit", concurrency=1).score([req()])[0]
    assert verdict.score == pytest.approx(0.5 * 7 + 0.5 * 10)
    assert server.bodies[1]["prompt"] == server.bodies[0]["prompt"] + " 1" and server.bodies[1]["max_tokens"] == 1


def test_logit_mode_without_logprobs_falls_back_to_the_written_score_and_counts_it(server):
    response = chat_response(["Score: 6"])
    response["choices"][0]["logprobs"] = None
    server.default = ("ok", response)
    judge = judge_for(server, mode="logit")
    assert judge.score([req()])[0].score == 6.0
    assert judge.stats.as_dict()["logprobs_missing"] == 1


def test_a_slow_server_times_out_is_retried_and_then_counted_as_a_failure(server):
    server.script = [("slow", 1.0), ("slow", 1.0)]
    judge = judge_for(server, timeout_s=0.2, max_attempts=2)
    start = time.monotonic()
    verdict = judge.score([req()])[0]
    assert time.monotonic() - start < 1.5  # gave up on the timeout, did not wait for the server
    assert verdict.score is None and verdict.error.startswith("timeout")
    stats = judge.stats.as_dict()
    assert stats["failed/timeout"] == 1 and stats["retries"] == 1 and len(server.bodies) == 2


def test_server_errors_are_retried_with_exponential_backoff(server):
    server.script = [("status", 500), ("status", 503)]
    judge = judge_for(server, backoff_s=0.1, max_attempts=3)
    verdict = judge.score([req()])[0]
    assert verdict.score == 7.0
    gaps = [b - a for a, b in zip(server.arrivals, server.arrivals[1:])]
    assert len(gaps) == 2 and gaps[0] >= 0.1 and gaps[1] >= 0.2
    assert judge.stats.as_dict()["retries"] == 2 and "failed" not in judge.stats.as_dict()


def test_a_server_that_keeps_failing_gives_none_and_the_failure_counter_counts_it(server):
    server.default = ("status", 500)
    judge = judge_for(server, max_attempts=3)
    verdicts = judge.score([req("a"), req("b")])
    assert [v.score for v in verdicts] == [None, None]
    assert all(v.error.startswith("http 500") for v in verdicts)
    stats = judge.stats.as_dict()
    assert stats["failed"] == 2 and stats["failed/http 500"] == 2 and stats["retries"] == 4
    assert len(server.bodies) == 6


def test_a_client_error_is_not_retried(server):
    server.script = [("status", 400)]
    judge = judge_for(server)
    verdict = judge.score([req()])[0]
    assert verdict.error.startswith("http 400") and len(server.bodies) == 1


def test_no_more_than_concurrency_requests_are_in_flight(server):
    server.script = [("slow", 0.15)] * 6
    judge = judge_for(server, concurrency=2)
    verdicts = judge.score([req(str(i)) for i in range(6)])
    assert all(v.score == 7.0 for v in verdicts)
    assert server.max_in_flight == 2


def test_the_api_key_comes_from_the_named_environment_variable(server, monkeypatch):
    monkeypatch.setenv("SQRL_TEST_JUDGE_KEY", "sk-test-123")
    judge_for(server, api_key_env="SQRL_TEST_JUDGE_KEY").score([req()])
    assert server.headers[0]["Authorization"] == "Bearer sk-test-123"
    monkeypatch.delenv("SQRL_TEST_JUDGE_KEY")
    judge_for(server, api_key_env="SQRL_TEST_JUDGE_KEY").score([req("other")])
    assert "Authorization" not in server.headers[1]


def test_an_unparseable_or_malformed_answer_is_a_counted_failure(server):
    server.script = [("ok", chat_response(["I cannot grade this."])), ("ok", {"choices": []})]
    judge = judge_for(server, concurrency=1)
    v1, v2 = judge.score([req("a"), req("b")])
    assert v1.score is None and v1.error.startswith("unparseable")
    assert v2.score is None and v2.error.startswith("bad response")
    assert judge.stats.as_dict()["failed"] == 2


def test_the_completions_endpoint_sends_a_plain_prompt_that_ends_in_the_score_prefix(server):
    server.default = ("ok", {"choices": [{"text": " 4", "logprobs": {"tokens": [" 4"], "top_logprobs": [{" 4": math.log(0.5), " 5": math.log(0.5)}]}}]})
    judge = judge_for(server, endpoint="completions", mode="logit")
    verdict = judge.score([req()])[0]
    assert verdict.score == pytest.approx(4.5)
    body = server.bodies[0]
    assert body["prompt"].endswith("Score:") and body["logprobs"] == 20 and "messages" not in body


def _dead(server):
    """Stop the server: its port refuses connections from now on. Returns the port."""
    port = server.httpd.server_address[1]
    server.close()
    return port


def test_a_dead_server_trips_the_breaker_and_the_rest_of_the_batch_fails_at_once(server):
    batch = [req(f"answer {i}") for i in range(20)]
    judge = judge_for(server, concurrency=1, max_attempts=3, backoff_s=0.05, give_up_after=3, connect_timeout_s=1)
    assert judge.score([req("warm")])[0].score == 7.0
    _dead(server)
    start = time.monotonic()
    verdicts = judge.score(batch)
    took = time.monotonic() - start
    errors = [v.error.split(":", 1)[0] for v in verdicts]
    assert errors == ["connection"] * 3 + ["gave up"] * 17  # one at a time: the first three went through their retries
    assert all(v.score is None for v in verdicts)
    stats = judge.stats.as_dict()
    assert stats["failed/connection"] == 3 and stats["failed/gave up"] == 17 and stats["failed"] == 20
    assert stats["retries"] == 6 and stats["gave_up"] == 1
    # without the breaker every request goes through its retries and its backoff (0.05 + 0.1 s each)
    patient = judge_for(server, concurrency=1, max_attempts=3, backoff_s=0.05, give_up_after=0, connect_timeout_s=1)
    start = time.monotonic()
    assert all(v.error.startswith("connection:") for v in patient.score(batch))
    took_without = time.monotonic() - start
    assert patient.stats.as_dict()["retries"] == 40 and "gave_up" not in patient.stats.as_dict()
    print(f"dead server, 20 judgements: {took:.2f} s with give_up_after=3, {took_without:.2f} s without")
    assert took < took_without / 2  # the counters above are the proof; the time only shows the point


def test_with_concurrent_requests_the_breaker_stops_those_in_their_retries(server):
    judge = judge_for(server, concurrency=4, max_attempts=4, backoff_s=0.05, give_up_after=2, connect_timeout_s=1)
    _dead(server)
    stats_before = judge.stats.as_dict()
    verdicts = judge.score([req(f"answer {i}") for i in range(40)])
    stats = judge.stats.as_dict()
    assert stats_before == {} and stats["failed"] == 40
    # at most the judgements in flight when it opened (concurrency - 1 more) end as connection failures
    assert 2 <= stats["failed/connection"] <= 2 + 3
    assert stats["failed/gave up"] == 40 - stats["failed/connection"] and stats["gave_up"] == 1
    assert stats["retries"] <= 3 * (2 + 3)
    assert {v.error.split(":", 1)[0] for v in verdicts} == {"connection", "gave up"}


def test_after_the_cool_down_a_server_that_is_back_scores_again(server):
    judge = judge_for(server, concurrency=1, max_attempts=2, backoff_s=0.01, give_up_after=2,
                      give_up_cooldown_s=30.0, connect_timeout_s=1)
    now = [1000.0]
    judge.breaker.clock = lambda: now[0]  # the cool-down on a clock of our own: no race with a loaded machine
    port = _dead(server)
    assert [v.error.split(":")[0] for v in judge.score([req(str(i)) for i in range(4)])] == \
        ["connection", "connection", "gave up", "gave up"]
    now[0] += 31  # cool-down over, server still dead: one judgement is sent, fails, and opens it again
    assert [v.error.split(":")[0] for v in judge.score([req(f"b{i}") for i in range(3)])] == \
        ["connection", "gave up", "gave up"]
    assert judge.stats.as_dict()["gave_up"] == 2
    back = Server(port)  # the server restarts on the same port
    try:
        now[0] += 29
        assert all(v.error.startswith("gave up") for v in judge.score([req("c")]))  # still cooling down
        assert back.bodies == []
        now[0] += 2
        verdicts = judge.score([req(f"d{i}") for i in range(3)])
        assert [v.score for v in verdicts] == [7.0, 7.0, 7.0] and len(back.bodies) == 3
    finally:
        back.close()


def test_a_host_that_never_answers_the_connection_trips_the_breaker_too():
    """A node that is down or firewalled drops the connection attempt: requests raises ConnectTimeout (also a
    Timeout). It counts as a connection failure, so the breaker opens. A listening socket whose accept queue is
    full drops new connection attempts the same way."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):  # fill the accept queue; later attempts get no answer
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
            fillers.append(c)
        time.sleep(0.1)
        judge = OpenAIJudge(f"http://127.0.0.1:{port}/v1", "m", concurrency=1, max_attempts=2, backoff_s=0.01,
                            timeout_s=30, connect_timeout_s=0.3, give_up_after=2)
        verdicts = judge.score([req(str(i)) for i in range(5)])
        assert [v.error.split(":")[0] for v in verdicts] == ["connection"] * 2 + ["gave up"] * 3
        assert "ConnectTimeout" in verdicts[0].error and "0.3 s" in verdicts[0].error
        assert judge.stats.as_dict()["gave_up"] == 1
    finally:
        for c in fillers:
            c.close()
        listener.close()


def test_an_unreachable_server_fails_with_a_connection_error():
    judge = OpenAIJudge("http://127.0.0.1:9/v1", "m", max_attempts=2, backoff_s=0.01, timeout_s=1, connect_timeout_s=0.5)
    verdict = judge.score([req()])[0]
    assert verdict.score is None and verdict.error.startswith("connection")


def test_prefill_opens_the_assistant_turn_with_the_score_prefix_and_reads_the_continuation(server):
    server.default = ("ok", chat_response([" ", "6"], {1: {"6": 0.5, "8": 0.5}}))
    judge = judge_for(server, mode="logit", prefill=True, score_prefix="Score:")
    verdict = judge.score([req()])[0]
    assert verdict.score == pytest.approx(7.0) and verdict.text == "Score: 6"
    body = server.bodies[0]
    assert body["messages"][-1] == {"role": "assistant", "content": "Score:"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
