"""The survey shown after the last case: a YAML list of questions (default: the source paper's
Appendix A, ``survey.yaml`` beside this module) and the check of a reader's answers to it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pydantic

from mammosynth.builders.core.config_io import StrictModel, load_model
from mammosynth.builders.core.errors import InputError

DEFAULT_SURVEY = Path(__file__).with_name("survey.yaml")
MAX_TEXT = 2000  # characters of one free-text answer


class Question(StrictModel):
    id: str = pydantic.Field(pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    text: str = pydantic.Field(min_length=1)
    kind: Literal["single", "multi", "number", "text"]
    options: list[str] = []
    other: bool = pydantic.Field(False, description="an 'Other (please specify)' text beside the options")
    required: bool = False

    @pydantic.model_validator(mode="after")
    def _options(self) -> Question:
        if self.kind in ("single", "multi") and not self.options:
            raise ValueError(f"question {self.id}: a {self.kind} question lists its options")
        if self.kind in ("number", "text") and self.options:
            raise ValueError(f"question {self.id}: a {self.kind} question has no options")
        return self


class Survey(StrictModel):
    title: str = "Reader survey"
    intro: str = ""
    questions: list[Question] = pydantic.Field(min_length=1)

    @pydantic.model_validator(mode="after")
    def _unique(self) -> Survey:
        ids = [q.id for q in self.questions]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"question ids occur twice: {dup}")
        return self


def load_survey(path: str | Path) -> Survey:
    return load_model(Survey, path)


def check_answers(survey: Survey, answers: Any) -> dict[str, Any]:
    """A reader's answers, checked against the questions: ``{id: value}`` with a single choice as
    its option text, a multiple choice as a list of option texts, a number, or text; ``{id}.other``
    the free text beside the options. InputError naming the question otherwise."""
    if not isinstance(answers, dict):
        raise InputError("survey answers must be an object", field="answers")
    by_id = {q.id: q for q in survey.questions}
    out: dict[str, Any] = {}
    for name, value in answers.items():
        base, _, suffix = str(name).partition(".")
        q = by_id.get(base)
        if q is None or (suffix and (suffix != "other" or not q.other)):
            raise InputError("no such question", field=str(name))
        if value in (None, "", []):
            continue
        if suffix:
            out[name] = _text(value, name)
        elif q.kind == "single":
            if value not in q.options:
                raise InputError("not one of the options", field=name)
            out[name] = value
        elif q.kind == "multi":
            if not isinstance(value, list) or any(v not in q.options for v in value):
                raise InputError("must be a list of the options", field=name)
            out[name] = [o for o in q.options if o in value]
        elif q.kind == "number":
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise InputError("must be a number", field=name) from None
            if not 0 <= number <= 1e6:
                raise InputError("must be between 0 and 1000000", field=name)
            out[name] = number
        else:
            out[name] = _text(value, name)
    missing = [q.id for q in survey.questions if q.required and q.id not in out]
    if missing:
        raise InputError("required question not answered", field=missing[0])
    return out


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise InputError("must be text", field=name)
    return value[:MAX_TEXT]
