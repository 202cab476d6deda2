"""Every error is an OpenAI envelope with the right status, and the server stays healthy."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.e2e.conftest import Server, audit_record

pytestmark = pytest.mark.e2e
MODEL = "smollm2-135m-instruct"
HI = [{"role": "user", "content": "hi"}]


def envelope(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    return error  # type: ignore[no-any-return]


def post(server: Server, path: str, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{server.v1}{path}", timeout=60, **kwargs)  # type: ignore[arg-type]


def test_unknown_model_is_404_model_not_found(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=HI)  # type: ignore[arg-type]
    assert info.value.code == "model_not_found"
    assert info.value.body["param"] == "model"  # type: ignore[index]


def test_prompt_longer_than_context_is_400_context_length_exceeded(client: OpenAI) -> None:
    long = [{"role": "user", "content": "hello " * 3000}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=long)  # type: ignore[arg-type]
    assert info.value.code == "context_length_exceeded"
    assert "2048" in info.value.message


def test_streamed_request_with_a_bad_prompt_fails_before_streaming(client: OpenAI) -> None:
    long = [{"role": "user", "content": "hello " * 3000}]
    with pytest.raises(openai.BadRequestError) as info:
        list(client.chat.completions.create(model=MODEL, messages=long, stream=True))  # type: ignore[arg-type]
    assert info.value.code == "context_length_exceeded"


@pytest.mark.parametrize(
    ("raw_fields", "param"),
    [
        ('"temperature": -1', "temperature"),
        ('"temperature": NaN', "temperature"),
        ('"top_p": Infinity', "top_p"),
        ('"top_p": "high"', "top_p"),
        ('"max_tokens": -3', "max_tokens"),
        ('"max_tokens": 2.5', "max_tokens"),
        ('"presence_penalty": 9', "presence_penalty"),
        ('"seed": "x"', "seed"),
        ('"stop": [1, 2]', "stop"),
        ('"n": 3', "n"),
        ('"top_k": -2', "top_k"),
        ('"logprobs": true, "top_logprobs": 50', "top_logprobs"),
    ],
)
def test_bad_parameter_is_400_naming_it(server: Server, raw_fields: str, param: str) -> None:
    body = '{"messages": [{"role": "user", "content": "hi"}], ' + raw_fields + "}"
    response = post(
        server, "/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    error = envelope(response)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_malformed_json_is_400(server: Server) -> None:
    response = post(
        server,
        "/chat/completions",
        content=b'{"messages": [',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert envelope(response)["code"] == "invalid_json"


def test_body_that_is_not_an_object_is_400(server: Server) -> None:
    response = post(server, "/chat/completions", json=[1, 2, 3])
    assert response.status_code == 400
    envelope(response)


def test_body_over_the_limit_is_413(server: Server) -> None:
    huge = {"messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}
    response = post(server, "/chat/completions", json=huge)
    assert response.status_code == 413
    assert envelope(response)["code"] == "payload_too_large"


def test_chunked_body_over_the_limit_is_413(server: Server) -> None:
    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(5):
            yield b"x" * (1024 * 1024)

    response = post(server, "/completions", content=chunks())
    assert response.status_code == 413
    envelope(response)


def test_unknown_route_and_wrong_method_are_enveloped(server: Server) -> None:
    missing = httpx.get(f"{server.v1}/nothing-here")
    assert missing.status_code == 404
    envelope(missing)
    wrong = httpx.get(f"{server.v1}/chat/completions")
    assert wrong.status_code == 405
    envelope(wrong)


def test_server_is_healthy_after_bad_input(server: Server, client: OpenAI) -> None:
    post(server, "/chat/completions", content=b"\xff\xfe garbage")
    post(server, "/completions", json={"prompt": "x", "temperature": "NaN"})
    assert httpx.get(f"{server.base_url}/health").json() == {"status": "ok"}
    reply = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=3)  # type: ignore[arg-type]
    assert reply.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/chat/completions", b'{"messages": [{"role": "user", "content": "\\ud800"}]}'),
        ("/completions", b'{"prompt": "\\udfff"}'),
        ("/chat/completions", b"[" * 10_000 + b"]" * 10_000),
        ("/completions", b'{"prompt": "x", "max_tokens": ' + b"9" * 4301 + b"}"),
    ],
    ids=["surrogate-chat", "surrogate-prompt", "deep", "long-int"],
)
def test_input_that_used_to_crash_is_a_400_without_a_traceback(
    server: Server, shared_home: Path, path: str, body: bytes
) -> None:
    response = post(server, path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert envelope(response)["type"] == "invalid_request_error"
    request_id = response.headers["x-request-id"]
    assert audit_record(shared_home, request_id)["status"] == 400
    server.wait_for_log(rf"\[{request_id}\] POST /v1{path} 400")
    assert "Traceback" not in server.log_text()


def test_request_id_is_returned_and_logged(server: Server) -> None:
    response = httpx.get(f"{server.v1}/models", headers={"x-request-id": "trace-abc.123"})
    assert response.headers["x-request-id"] == "client-trace-abc.123"  # never a server id
    server.wait_for_log(r"\[client-trace-abc\.123\] GET /v1/models 200")
    generated = httpx.get(f"{server.base_url}/health").headers["x-request-id"]
    assert generated.startswith("req_")
    forged = httpx.get(f"{server.base_url}/health", headers={"x-request-id": "bad id/" + "x" * 200})
    assert forged.headers["x-request-id"].startswith("req_")
