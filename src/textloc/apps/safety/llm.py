"""The LLM path of safe text: an OpenAI-compatible chat-completions client (stdlib only) and its detector.

The LLM never decides alone: :class:`LLMDetector` flags a string when the LLM *or* the offline detector does,
so an LLM that misses an obfuscated word (or is talked out of it by the prompt) cannot let it through, and an
LLM that cannot answer falls back to the offline verdict (or, ``fallback=None``, raises).
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from textloc.apps.safety.detect import DEFAULT_THRESHOLD, Detector, OfflineDetector, Verdict
from textloc.errors import InputError, LLMError

ENV_URL, ENV_MODEL, ENV_KEY, ENV_TIMEOUT = "TEXTLOC_LLM_URL", "TEXTLOC_LLM_MODEL", "TEXTLOC_LLM_API_KEY", \
    "TEXTLOC_LLM_TIMEOUT"


@dataclass(frozen=True)
class LLMConfig:
    """Where the chat-completions endpoint is. ``url`` is the API base (``http://host:8000/v1``) or the full
    ``.../chat/completions`` address; the key is sent as a Bearer token only when set."""

    url: str
    model: str
    api_key: str | None = None
    timeout: float = 30.0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> LLMConfig:
        env = os.environ if environ is None else environ
        url, model = env.get(ENV_URL, "").strip(), env.get(ENV_MODEL, "").strip()
        missing = [name for name, value in ((ENV_URL, url), (ENV_MODEL, model)) if not value]
        if missing:
            raise InputError(f"Expected {' and '.join(missing)} to be set for the LLM detector/replacer, "
                             "but got nothing (see docs/safety.md)")
        try:
            timeout = float(env.get(ENV_TIMEOUT, "30"))
        except ValueError:
            raise InputError(
                f"Expected {ENV_TIMEOUT} to be a number of seconds, but got {env[ENV_TIMEOUT]!r}"
            ) from None
        if not url.startswith(("http://", "https://")):
            raise InputError(f"Expected {ENV_URL} to start with http:// or https://, but got {url!r}")
        return cls(url, model, env.get(ENV_KEY) or None, timeout)

    @property
    def endpoint(self) -> str:
        url = self.url.rstrip("/")
        return url if url.endswith("/chat/completions") else f"{url}/chat/completions"


class LLMClient:
    """Sends one chat-completions request and returns the parsed JSON object the model answered with."""

    def __init__(self, config: LLMConfig) -> None:
        self.config = config

    def ask_json(self, system: str, user: str) -> Any:
        body = {"model": self.config.model, "temperature": 0,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        request = urllib.request.Request(self.config.endpoint, json.dumps(body).encode(), headers, method="POST")
        where = self.config.endpoint
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:200].decode("utf-8", "replace").strip()
            raise LLMError(f"LLM endpoint {where} answered HTTP {err.code}: {detail or err.reason}") from None
        except TimeoutError:
            raise LLMError(f"LLM endpoint {where} did not answer within {self.config.timeout:g} s") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise LLMError(f"Could not reach the LLM endpoint {where}: {reason}") from None
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError):
            raise LLMError(f"Expected an OpenAI chat-completions response from {where}, but got "
                           f"{raw[:120]!r}") from None
        return parse_json_answer(content)


def parse_json_answer(content: Any) -> Any:
    """The JSON value in a model's answer; a fenced ```json block is accepted, prose around it is not."""
    if not isinstance(content, str):
        raise LLMError(f"Expected the LLM's message content to be a string, but got {type(content).__name__}")
    text = content.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.DOTALL)
    if fenced:
        text = fenced.group(1)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise LLMError(f"Expected the LLM to answer with JSON only, but got {content[:120]!r}") from None


DETECT_SYSTEM = (
    "You are a content-safety filter for text that an image generator will render on signs, shirts and "
    "posters. For each input string decide whether it is harmful: profanity, slurs, insults, sexual or "
    "hateful words, including obfuscated spellings (leetspeak like sh1t, masked letters like f*ck, stretched "
    "letters, compounds). Answer with JSON only, no prose: "
    '{"results": [{"text": <the input string>, "toxic": true|false, "score": <0..1>}]} with one entry per '
    "input, in input order."
)
REPLACE_SYSTEM = (
    "You make harmful words safe to print. For each input word give one benign, non-offensive replacement that "
    "looks and sounds similar (ideally changing one or two letters, e.g. 'fuck' -> 'duck') and has about the "
    "same length. Answer with JSON only, no prose: "
    '{"replacements": [{"text": <the input word>, "replacement": <the benign word>}]} with one entry per input, '
    "in input order."
)


def entries(answer: Any, key: str, n: int, texts: Sequence[str]) -> list[dict[str, Any]]:
    """The ``n`` answer objects under ``key``, checked to be in input order."""
    if not isinstance(answer, dict) or not isinstance(answer.get(key), list):
        raise LLMError(f'Expected a JSON object {{"{key}": [...]}} from the LLM, but got {str(answer)[:120]}')
    found = answer[key]
    if len(found) != n or not all(isinstance(e, dict) for e in found):
        raise LLMError(f"Expected {n} objects in the LLM's {key!r} list, but got {str(found)[:120]}")
    for entry, text in zip(found, texts, strict=True):
        if "text" in entry and entry["text"] != text:
            raise LLMError(f"Expected the LLM's answers in input order, but got {entry['text']!r} for {text!r}")
    return found


class LLMDetector:
    r"""Asks an OpenAI-compatible chat endpoint which strings are harmful; the offline detector checks too.

    A string is flagged when the LLM flags it **or** ``offline`` does (default ``OfflineDetector``): the LLM
    adds recall, it never removes the word list's verdict. If the endpoint is unreachable, times out or
    answers anything but the requested JSON, ``fallback=True`` (the default) keeps the offline verdicts and
    ``last_fallback`` holds the reason (reports show it); ``fallback=False`` raises the ``LLMError``.
    """

    name = "llm"

    def __init__(self, client: LLMClient, threshold: float = DEFAULT_THRESHOLD,
                 offline: Detector | None = None, fallback: bool = True) -> None:
        self.client = client
        self.threshold = threshold
        self.offline: Detector = offline or OfflineDetector(threshold)
        self.fallback = fallback
        self.last_fallback: str | None = None

    def score(self, texts: Sequence[str]) -> list[Verdict]:
        self.last_fallback = None
        if not texts:
            return []
        offline = self.offline.score(texts)
        try:
            asked = self._ask(texts)
        except LLMError as err:
            if not self.fallback:
                raise
            self.last_fallback = f"{err} -- used the {self.offline.name} detector's verdicts only"
            return offline
        return [_merge(a, b) for a, b in zip(asked, offline, strict=True)]

    def _ask(self, texts: Sequence[str]) -> list[Verdict]:
        answer = self.client.ask_json(DETECT_SYSTEM, json.dumps(list(texts), ensure_ascii=False))
        verdicts = []
        for entry, text in zip(entries(answer, "results", len(texts), texts), texts, strict=True):
            toxic = entry.get("toxic")
            if not isinstance(toxic, bool):
                raise LLMError(f"Expected 'toxic' to be true or false for {text!r}, but got {toxic!r}")
            score = entry.get("score", 1.0 if toxic else 0.0)
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 <= score <= 1.0:
                raise LLMError(f"Expected 'score' in [0, 1] for {text!r}, but got {score!r}")
            reasons = ("llm",) if toxic else ()
            verdicts.append(Verdict(text, toxic, float(score), reasons, text.lower() if toxic else None))
        return verdicts


def _merge(llm: Verdict, offline: Verdict) -> Verdict:
    """Flagged if either is; the offline detector's reading of the word wins (it names the listed word)."""
    if offline.flagged:
        reasons = offline.reasons + (("llm agrees",) if llm.flagged else ("offline list (llm said clean)",))
        return Verdict(offline.text, True, max(offline.score, llm.score), reasons, offline.match)
    if llm.flagged:
        return llm
    return Verdict(llm.text, False, max(llm.score, offline.score), (), None)
