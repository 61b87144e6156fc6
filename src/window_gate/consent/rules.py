"""Which customer words stop or resume marketing messages. Pure: no I/O.

A keyword matches only as the whole message (text body, quick-reply button payload or label, interactive
reply id or title), compared after `normalise()`: trimmed, surrounding punctuation dropped, inner
whitespace collapsed, case and accents ignored. So "Parar", " stop! " and "CANCELAR." match, while
"stop by tomorrow" or "quero cancelar meu pedido" do not.
"""

import unicodedata
from dataclasses import dataclass

from window_gate.config import Settings, SettingsError

MARKETING = "marketing"

# Longer messages are never compared (nor normalised): cheap on the webhook hot path.
MAX_KEYWORD_CHARS = 40
MAX_MESSAGE_CHARS = 64  # room for padding and punctuation around a keyword
PUNCTUATION = " \t\r\n.,;:!?¡¿\"'`*_~()[]-"


def normalise(text: str) -> str:
    """The comparable form of a short message: "  Não, PARAR!! " → "nao, parar"."""
    text = text.strip(PUNCTUATION)
    if not text.isascii():
        decomposed = unicodedata.normalize("NFKD", text)
        text = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(text.casefold().split())


def comparable(text: object) -> str | None:
    """`normalise(text)` when it could be a keyword at all, else None (long text, not a string)."""
    if isinstance(text, str) and 0 < len(text) <= MAX_MESSAGE_CHARS:
        return normalise(text) or None
    return None


def parse_keywords(setting: str) -> frozenset[str]:
    """A comma-separated setting → normalised keywords. Raises ValueError naming a bad one."""
    out = set()
    for raw in setting.split(","):
        if not raw.strip():
            continue
        word = normalise(raw)
        if not word or len(word) > MAX_KEYWORD_CHARS:
            raise ValueError(f"keyword {raw.strip()!r} must have 1 to {MAX_KEYWORD_CHARS} characters")
        out.add(word)
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Keywords:
    """Normalised opt-out and opt-in words; a word in both lists stops start-up (`configured`)."""

    opt_out: frozenset[str]
    opt_in: frozenset[str]

    @classmethod
    def parse(cls, opt_out: str, opt_in: str) -> "Keywords":
        keywords = cls(parse_keywords(opt_out), parse_keywords(opt_in))
        if both := sorted(keywords.opt_out & keywords.opt_in):
            raise ValueError(f"{', '.join(both)} cannot both stop and resume marketing messages")
        return keywords

    @classmethod
    def configured(cls, settings: Settings) -> "Keywords":
        """The settings' lists; a bad one is a SettingsError of one line naming it (stops start-up)."""
        for name in ("opt_out_keywords", "opt_in_keywords"):
            try:
                parse_keywords(getattr(settings, name))
            except ValueError as exc:
                raise SettingsError(f"WINDOW_GATE_{name.upper()}: {exc}") from None
        try:
            return cls.parse(settings.opt_out_keywords, settings.opt_in_keywords)
        except ValueError as exc:
            both = "WINDOW_GATE_OPT_OUT_KEYWORDS and WINDOW_GATE_OPT_IN_KEYWORDS"
            raise SettingsError(f"{both}: {exc}") from None

    def verdict(self, words: tuple[str, ...]) -> bool | None:
        """True: opt out; False: opt in; None: no keyword. Opting out wins if one message says both."""
        if any(w in self.opt_out for w in words):
            return True
        if any(w in self.opt_in for w in words):
            return False
        return None
