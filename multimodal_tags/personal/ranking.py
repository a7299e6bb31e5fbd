"""Tags shown per user: what a user's own judgements say of each tag key decides which tags they see.

A user's acceptance rate of a key's proposed tags is shrunk towards everyone's:
    rate(u, key) = (accepted_u + k * rate_all) / (judged_u + k)
A proposed tag whose key the user more likely rejects (rate < `hide_below`) is not shown to them; for
a key they accept nearly always (rate >= `more_above`) and clearly more than everyone does (by
`more_margin`: a key everyone accepts is one the model gets right, not one this user wants more of),
the tag head's other values of that key above `more_bar` are shown too. An unknown user gets
everyone's rates: the view every user shares.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..models.tag_tokenizer import tag_key


@dataclass
class PersonalConfig:
    shrinkage: float = 5.0
    hide_below: float = 0.5
    more_above: float = 0.95
    more_bar: float = 0.3
    more_margin: float = 0.1


def key_rates(user_counts: dict[str, tuple[int, int]], all_counts: dict[str, tuple[int, int]],
              settings: PersonalConfig | None = None) -> dict[str, float]:
    """The user's shrunk acceptance rate per key, from (accepted, judged) counts per key."""
    k = (settings or PersonalConfig()).shrinkage
    rates = {}
    for key in set(user_counts) | set(all_counts):
        a_all, n_all = all_counts.get(key, (0, 0))
        prior = a_all / n_all if n_all else 1.0
        a, n = user_counts.get(key, (0, 0))
        rates[key] = (a + k * prior) / (n + k)
    return rates


def personal_view(tags: dict[str, float], rates: dict[str, float], everyone: dict[str, float],
                  head: dict[str, float] | None = None, settings: PersonalConfig | None = None) -> dict[str, float]:
    """The tags (tag -> score) a user sees: keys they reject dropped, keys they want more of than
    everyone (`everyone`: the shared rates) widened with the head's other values (`head`: tag -> the
    tag head's probability)."""
    s = settings or PersonalConfig()
    shown = {t: v for t, v in tags.items() if rates.get(tag_key(t), 1.0) >= s.hide_below}

    def wants_more(key: str) -> bool:
        rate = rates.get(key, 0.0)
        return rate >= s.more_above and rate >= everyone.get(key, 1.0) + s.more_margin

    for t, p in (head or {}).items():
        if t not in shown and p >= s.more_bar and wants_more(tag_key(t)):
            shown[t] = p
    return shown
