"""The one redaction function: every way a secret rides in a URI or an error text."""

import pytest

from components.core.redact import redact, redact_json


@pytest.mark.parametrize(("text", "secret"), [
    ("https://alice:hunter2@mlflow.example.com/api", "hunter2"),
    ("https://alice:hunter2@mlflow.example.com/api", "alice"),
    ("https://ghp_TOKEN123@host.example/x", "ghp_TOKEN123"),
    ("postgresql://u:p%40ss@db:5432/mlflow", "p%40ss"),
    ("http://judge.local/v1?key=abc123&model=x", "abc123"),
    ("http://judge.local/v1?model=x&token=abc123", "abc123"),
    ("https://h/x?api_key=abc123", "abc123"),
    ("https://h/x?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA", "deadbeef"),
    ("HTTP 401: Authorization: Bearer eyJhbGciOi.xyz", "eyJhbGciOi.xyz"),
    ("key sk-proj-ABCDEFGHIJKLMNOP used", "sk-proj-ABCDEFGHIJKLMNOP"),
    ("error reaching 'https://u:pw0rd@host:8080' (timeout)", "pw0rd"),
])
def test_secrets_are_masked(text, secret):
    out = redact(text)
    assert secret not in out and "***" in out


@pytest.mark.parametrize("text", [
    "s3://bucket/prefix/model@v2/weights.safetensors",
    "sqlite:////tmp/runs/mlflow.db",
    "http://127.0.0.1:5000",
    "max_tokens=5 key_metrics accuracy=0.5",
    "https://api.openai.com/v1/chat/completions?model=gpt-4",
])
def test_harmless_text_is_unchanged(text):
    assert redact(text) == text


def test_json_values_and_keys_are_redacted_deeply():
    value = {"judge": {"endpoint": "http://h/v1?key=s3cr3t"}, "runs": ["https://u:s3cr3t@h"], "n": 3,
             "https://u:s3cr3t@h": True}
    out = redact_json(value)
    assert "s3cr3t" not in repr(out) and out["n"] == 3 and out["runs"] == ["https://***@h"]
