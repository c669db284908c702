"""Fine-tuning scenarios of the embedded model: slices of the renderer's world to train on and test on.

Why here: a scenario is a fact about the renderer (its fonts, alphabet and string lengths), so it lives in
the model's package; ``apps.finetune`` reaches it through the model profile's ``training`` recipe
(``textloc.models.embedded.finetuning``) and never imports this module.

Training strings avoid the renderer's reserved (CRC32) class and held-out test strings are drawn only from
it, so a benchmark measures spelling of strings an adapter never saw. Every batch is a pure function of
``(seed, step, rank)``, so a resumed run sees exactly the data an uninterrupted one would have seen.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from textloc.errors import InputError
from textloc.models.embedded import renderer
from textloc.models.embedded.tokenizer import describe, make_prompt

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Scenario:
    """A slice of the renderer's world: one font, an alphabet, a length range, one or two words."""

    name: str
    description: str
    font: str | None = None
    letters: str = ""  # alphabet the strings are drawn from; "" = A-Z
    min_len: int = 3
    max_len: int = 6
    p_attribute: float = 1.0  # how often make_prompt mentions each attribute
    words: int = 1  # 2: two words separated by a space, within the renderer's 6 characters

    def __post_init__(self) -> None:
        if self.font is not None and self.font not in renderer.FONTS:
            raise InputError(f"Expected font in {sorted(renderer.FONTS)}, but got {self.font!r}")
        if not set(self.letters) <= set(renderer.ALPHABET):
            raise InputError(f"Expected letters from A-Z, but got {self.letters!r}")
        if self.words not in (1, 2):
            raise InputError(f"Expected words=1 or words=2, but got {self.words!r}")
        if not renderer.MIN_CHARS <= self.min_len <= self.max_len <= renderer.MAX_CHARS:
            raise InputError(
                f"Expected string lengths within {renderer.MIN_CHARS}-{renderer.MAX_CHARS}, "
                f"but got {self.min_len}-{self.max_len}"
            )

    def text(self, rng: random.Random, reserved: bool) -> str:
        """A string of the scenario, from the held-out class if ``reserved``."""
        alphabet = self.letters or renderer.ALPHABET
        for _ in range(10_000):
            length = rng.randint(self.min_len, self.max_len)
            if self.words == 2:  # split the length into two words around a space
                length = max(length, 3)
                first = rng.randint(1, length - 2)
                letters = [rng.choice(alphabet) for _ in range(length - 1)]
                text = "".join(letters[:first]) + " " + "".join(letters[first:])
            else:
                text = "".join(rng.choice(alphabet) for _ in range(length))
            if renderer.is_reserved(text) == reserved:
                return text
        raise InputError(f"Scenario {self.name!r} has too few strings to split into train and test")

    def spec(self, rng: random.Random, reserved: bool = False) -> renderer.SignSpec:
        fixed = {"font": self.font} if self.font else {}
        return renderer.random_spec(rng, self.text(rng, reserved), **fixed)

    def test_specs(self, n: int, seed: int = 12345) -> list[renderer.SignSpec]:
        """``n`` held-out ground-truth specs (their fully described prompts come from ``tokenizer.describe``)."""
        rng = random.Random(seed)
        return [self.spec(rng, reserved=True) for _ in range(n)]

    def test_cases(self, n: int, seed: int = 12345) -> list[TestCase]:
        """``n`` held-out cases: the prompt to generate from and what a correct image shows."""
        return [TestCase(describe(s), s.text, s.background, s.text_colour) for s in self.test_specs(n, seed)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TestCase:
    """One held-out prompt and its answer key (read by the finetune benchmark through the profile)."""

    __test__ = False  # not a pytest class

    prompt: str
    text: str
    background: str
    text_colour: str


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("all", "the base model's world: any font, 3-6 random letters"),
        Scenario("serif", "serif font only, 3-6 random letters", font="serif"),
        Scenario("mono", "monospaced font only, 3-6 random letters", font="mono"),
        Scenario("long", "long strings: exactly 6 random letters", min_len=6, max_len=6),
        Scenario("letters-QXZJ", "strings over the rare letters Q, X, Z, J (3-6 letters)", letters="QXZJ"),
    )
}


def parse_scenario(text: str) -> Scenario:
    """A scenario by name (``serif``) or as ``key=value`` pairs (``font=serif,letters=QXZJ,len=4-6,words=2``)."""
    text = text.strip()
    if text in SCENARIOS:
        return SCENARIOS[text]
    if "=" not in text:
        raise InputError(
            f"Expected a scenario in {sorted(SCENARIOS)} or key=value pairs (font=, letters=, len=, words=), "
            f"but got {text!r}"
        )
    fields: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if key == "font":
            fields["font"] = value
        elif key == "letters":
            fields["letters"] = value.upper()
        elif key == "words":
            if not value.isdigit():
                raise InputError(f"Expected words=1 or words=2, but got {part!r}")
            fields["words"] = int(value)
        elif key == "len":
            low, _, high = value.partition("-")
            if not low.isdigit() or (high and not high.isdigit()):
                raise InputError(f"Expected len=N or len=N-M, but got {part!r}")
            fields["min_len"], fields["max_len"] = int(low), int(high or low)
        else:
            raise InputError(f"Expected scenario keys font, letters, len or words, but got {key!r}")
    return Scenario(name=text, description=f"custom scenario {text}", **fields)


class SyntheticSigns:
    """Signs drawn on the fly; without a scenario exactly the base recipe's ``train.sample_batch``."""

    def __init__(self, scenario: Scenario | None = None, seed: int = 0) -> None:
        self.scenario = scenario
        self.seed = seed
        self.label = f"synthetic:{scenario.name}" if scenario else "synthetic"

    def batch(self, step: int, batch_size: int, rank: int = 0) -> tuple[list[str], torch.Tensor]:
        """Prompts and images (B, 3, 24, 64) in [-1, 1] of ``step`` for process ``rank``."""
        import torch

        from textloc.models.embedded.train import TrainConfig, sample_batch

        seed = self.seed + 7919 * rank  # each process of a multi-GPU run sees its own data
        if self.scenario is None:
            prompts, images, _ = sample_batch(TrainConfig(seed=seed, batch_size=batch_size, cfg_dropout=0.0), step)
            return prompts, images
        rng = random.Random(seed * 1_000_003 + step)
        prompts, arrays = [], []
        for _ in range(batch_size):
            spec = self.scenario.spec(rng)
            prompts.append(make_prompt(spec, rng, self.scenario.p_attribute))
            arrays.append(renderer.to_tensor_array(renderer.render(spec)))
        return prompts, torch.from_numpy(np.stack(arrays))

    def sample_prompts(self, n: int = 8) -> list[str]:
        return [case.prompt for case in (self.scenario or SCENARIOS["all"]).test_cases(n, seed=999)]
