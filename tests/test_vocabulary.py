"""Team vocabulary: hotwords for decoding, exact-match correction, the LLM correct prompt."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stt_engine.config import Settings
from stt_engine.options import build_options
from stt_engine.textproc.vocabulary import load_vocabulary, merge_hotwords, parse
from tests.support import REPO, clip, error_rate, post_audio, running_server

VOCAB = "# our terms\n자동이체 | 자동이 채 | 자동 이채\n수하물 | 수암을 | 수하 물\nKubernetes | 쿠버네티스\n"


def test_parse_and_correct() -> None:
    v = parse(VOCAB)
    assert v.terms == ("자동이체", "수하물", "Kubernetes")
    assert v.correct("인터넷 뱅킹에서 자동이 채 조회") == "인터넷 뱅킹에서 자동이체 조회"
    assert v.correct("초과 수암을 요금") == "초과 수하물 요금"
    assert v.correct("쿠버네티스 클러스터") == "Kubernetes 클러스터"
    assert v.hotwords == "자동이체, 수하물, Kubernetes"
    assert "자동이체" in v.glossary()


def test_latin_aliases_match_whole_words() -> None:
    v = parse("GitLab | git lab\n")
    assert v.correct("push to git lab today") == "push to GitLab today"
    assert v.correct("digit labels") == "digit labels"


def test_request_hotwords_add_to_the_team_terms(tmp_path: Path) -> None:
    path = tmp_path / "vocab.txt"
    path.write_text(VOCAB, encoding="utf-8")
    settings = Settings(_env_file=None, vocabulary_file=path)
    options = build_options(settings, {"ko"}, language="ko", hotwords="상담원",
                            vocabulary=load_vocabulary(settings.vocabulary_file))
    assert options.hotwords == "자동이체, 수하물, Kubernetes, 상담원"
    assert build_options(Settings(_env_file=None), {"ko"}, language="ko").hotwords is None
    assert merge_hotwords(load_vocabulary(None), "x") == "x"
    # the caller's vocabulary, read once: building options reads no file
    pure = build_options(Settings(_env_file=None, vocabulary_file=tmp_path / "absent.txt"), {"ko"}, language="ko",
                         hotwords="상담원", vocabulary=parse(VOCAB))
    assert pure.hotwords == "자동이체, 수하물, Kubernetes, 상담원"


def test_llm_prompt_puts_the_glossary_first_for_correct_only() -> None:
    vocabulary = parse(VOCAB)
    assert vocabulary.llm_prompt("correct", None) == vocabulary.glossary()
    assert vocabulary.llm_prompt("correct", "keep it short") == vocabulary.glossary() + "\nkeep it short"
    assert vocabulary.llm_prompt("summarize", "keep it short") == "keep it short"
    assert parse("").llm_prompt("correct", "as is") == "as is"


@pytest.fixture(scope="module")
def vocab_server() -> Iterator[str]:
    path = REPO / "logs" / "tests" / "vocabulary.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(VOCAB, encoding="utf-8")
    with running_server({"VOCABULARY_FILE": str(path)}) as base:
        yield base


def test_vocabulary_fixes_misspelled_terms_in_shared_clips(server: str, vocab_server: str) -> None:
    """Base writes "자동이 채" for 자동이체 and "수암을" for 수하물; the team's list puts them right."""
    for name, term in (("ko/ett_pfd00004.wav", "자동이체"), ("ko/ett_kih00108.wav", "수하물")):
        c = clip(name)
        before = post_audio(server, "/v1/audio/transcriptions", c.path, language="ko").json()["text"]
        after = post_audio(vocab_server, "/v1/audio/transcriptions", c.path, language="ko").json()["text"]
        assert term not in before, before  # the model alone misspells it
        assert term in after, after
        assert error_rate(after, c) < error_rate(before, c), (before, after)
