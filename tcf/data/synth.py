"""A small MIND-like dataset with structure a recommender can learn, for demos and tests.

Generative story (all draws from one ``numpy.random.Generator(seed)``):

* K topics; each topic has its own vocabulary and its items lie on a line (position 0..n_t-1), like
  the episodes of a story. An item's title takes most words from a window of its topic's vocabulary
  around its position, so neighbouring items share words (text carries topic *and* sequence signal),
  plus a few generic words shared by all topics.
* Items have a Zipf popularity inside their topic; topics have Zipf weights too.
* Each user prefers 1-3 topics and clicks 5..40 items. Each click is, with probability P_NEXT, the
  next item(s) along the line of the previous click's topic (a Markov step: +1, +2 or +3), with
  P_TOPIC a popular item of one of the user's topics, otherwise a globally popular item (noise).
  Users rarely click an item twice.

So a sequence model (SASRec) can predict the next click far better than popularity can, and a text
tower can recognise both the topic and the neighbourhood of an item from its title.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tcf.data.output import check_output_folder, dataset_folder, write_tsv
from tcf.data.reader import BEHAVIORS_FILE
from tcf.errors import TcfError

P_NEXT = 0.5  # follow the story line of the previous click
P_TOPIC = 0.35  # a popular item of one of the user's topics (rest: a globally popular item)
STEPS = np.array([1, 2, 3])
STEP_P = np.array([0.7, 0.2, 0.1])
MIN_LEN, MAX_LEN = 5, 40
TOPIC_VOCAB, GENERIC_VOCAB = 40, 60
_ONSETS = "b c d f g h k l m n p r s t v z br cr dr fl gr pl st tr ch sh th".split()
_VOWELS = "a e i o u ai ea io ou".split()
_CODAS = ["", "", "n", "r", "s", "l", "x", "m", "nd", "st"]


def _words(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
    """``n`` new pronounceable pseudo-words (1-3 syllables), none in ``taken``."""
    out: list[str] = []
    while len(out) < n:
        k = int(rng.choice([1, 2, 3], p=[0.15, 0.6, 0.25]))
        w = "".join(
            _ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))] for _ in range(k)
        )
        w += _CODAS[rng.integers(len(_CODAS))]
        if w not in taken:
            taken.add(w)
            out.append(w)
    return out


def _zipf(rng: np.random.Generator, n: int, a: float = 1.0) -> np.ndarray:
    """Zipf weights 1/rank^a over a random permutation of n slots (popularity unrelated to position)."""
    w = 1.0 / np.arange(1, n + 1) ** a
    return w[rng.permutation(n)] / w.sum()


@dataclass(frozen=True)
class _Catalogue:
    """Items laid out by topic: slot = topic-major index; each topic's items lie on a line (``slot_pos``)."""

    sizes: np.ndarray  # items per topic
    starts: np.ndarray  # first slot of each topic
    slot_topic: np.ndarray
    slot_pos: np.ndarray
    item_of_slot: np.ndarray  # slot -> item index (so keys do not reveal topics)
    topic_w: np.ndarray  # topic popularity
    cdf: np.ndarray  # within-topic popularity: topic t spans (t, t+1]
    global_cdf: np.ndarray  # popularity over every slot, for noise clicks

    @property
    def n_topics(self) -> int:
        return len(self.sizes)


def _catalogue(rng: np.random.Generator, items: int) -> _Catalogue:
    n_topics = int(np.clip(items // 50, 2, 50))
    sizes = np.full(n_topics, items // n_topics)
    sizes[: items % n_topics] += 1
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    slot_topic = np.repeat(np.arange(n_topics), sizes)
    slot_pos = np.arange(items) - starts[slot_topic]
    item_of_slot = rng.permutation(items)
    within = np.concatenate([_zipf(rng, int(n)) for n in sizes])  # sums to 1 per topic
    topic_w = _zipf(rng, n_topics, a=0.7)
    running = np.cumsum(within)
    cdf = slot_topic + running - (running[starts] - within[starts])[slot_topic]
    cdf[starts + sizes - 1] = np.arange(1, n_topics + 1)  # exact topic ends (no float gap)
    global_p = within * topic_w[slot_topic]
    global_cdf = np.cumsum(global_p / global_p.sum())
    global_cdf[-1] = 1.0
    return _Catalogue(sizes, starts, slot_topic, slot_pos, item_of_slot, topic_w, cdf, global_cdf)


def _titles(rng: np.random.Generator, cat: _Catalogue) -> list[str]:
    """Each title mixes words near its item's place on its topic's vocabulary line with generic words."""
    taken: set[str] = set()
    generic = _words(rng, GENERIC_VOCAB, taken)
    vocab = [_words(rng, TOPIC_VOCAB, taken) for _ in range(cat.n_topics)]
    titles = [""] * len(cat.slot_topic)
    for slot in range(len(cat.slot_topic)):
        t, p = int(cat.slot_topic[slot]), int(cat.slot_pos[slot])
        centre = p * (TOPIC_VOCAB - 1) / max(1, cat.sizes[t] - 1)
        n_topical = int(rng.integers(5, 10))
        near = np.exp(-0.5 * ((np.arange(TOPIC_VOCAB) - centre) / 3.0) ** 2)
        topical = rng.choice(TOPIC_VOCAB, size=n_topical, replace=False, p=near / near.sum())
        shared = rng.choice(GENERIC_VOCAB, size=int(rng.integers(1, 4)), replace=False)
        words = [vocab[t][k] for k in topical] + [generic[k] for k in shared]
        words = [words[k] for k in rng.permutation(len(words))]
        words[0] = words[0].capitalize()
        titles[cat.item_of_slot[slot]] = " ".join(words)
    return titles


def _preferences(rng: np.random.Generator, cat: _Catalogue, users: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user: 1-3 preferred topics, the CDF of their Dirichlet weights, and a length 5..40 (MIND-like)."""
    n_pref = np.minimum(rng.integers(1, 4, users), cat.n_topics)
    gumbel = rng.gumbel(size=(users, cat.n_topics)) + np.log(cat.topic_w)  # Gumbel top-k: weighted, no repeats
    pref = np.argsort(-gumbel, axis=1)[:, :3]
    pref_w = rng.exponential(size=(users, 3))  # normalised exponentials = Dirichlet(1, ..., 1)
    pref_w[np.arange(3)[None, :] >= n_pref[:, None]] = 0.0
    pref_w /= pref_w.sum(axis=1, keepdims=True)
    pref_cdf = np.cumsum(pref_w, axis=1)
    pref_cdf[np.arange(3)[None, :] >= (n_pref - 1)[:, None]] = 1.0
    lengths = np.minimum(MIN_LEN + rng.geometric(1 / 12, users) - 1, MAX_LEN)
    return pref, pref_cdf, lengths


def _pick(rng: np.random.Generator, cat: _Catalogue, slots: np.ndarray, t: int, au: np.ndarray, pref: np.ndarray,
          pref_cdf: np.ndarray) -> np.ndarray:
    """One click for each user ``au`` at step ``t``: next to the last click, in a preferred topic, or noise."""
    r = rng.random(au.size)
    pick = np.empty(au.size, dtype=np.int64)
    nxt = (r < P_NEXT) & (t > 0)
    if nxt.any():
        prev = slots[au[nxt], t - 1]
        tp = cat.slot_topic[prev]
        step = rng.choice(STEPS, size=int(nxt.sum()), p=STEP_P)
        pick[nxt] = cat.starts[tp] + (cat.slot_pos[prev] + step) % cat.sizes[tp]
    top = ~nxt & (r < P_NEXT + P_TOPIC)
    if top.any():
        k = (rng.random(int(top.sum()))[:, None] > pref_cdf[au[top]]).sum(axis=1)
        tp = pref[au[top], k]
        found = np.searchsorted(cat.cdf, tp + rng.random(tp.size), side="right")
        pick[top] = np.minimum(found, cat.starts[tp] + cat.sizes[tp] - 1)  # float guard at t+1
    noise = ~nxt & ~top
    if noise.any():
        pick[noise] = np.searchsorted(cat.global_cdf, rng.random(int(noise.sum())), side="right")
    return np.minimum(pick, len(cat.slot_topic) - 1)


def _clicks(rng: np.random.Generator, cat: _Catalogue, pref: np.ndarray, pref_cdf: np.ndarray,
            lengths: np.ndarray) -> np.ndarray:
    """slots[u, t] = slot clicked at step t, one time step for all users at once."""
    users = len(lengths)
    slots = np.full((users, MAX_LEN), -1, dtype=np.int64)
    rows = np.arange(users)
    for t in range(MAX_LEN):
        active = rows[lengths > t]
        if active.size == 0:
            break
        choice = np.full(active.size, -1, dtype=np.int64)
        todo = np.arange(active.size)
        for _ in range(8):  # redraw clicks of already-clicked items a few times
            au = active[todo]
            pick = _pick(rng, cat, slots, t, au, pref, pref_cdf)
            choice[todo] = pick
            seen = (slots[au, :t] == pick[:, None]).any(axis=1)
            todo = todo[seen]
            if todo.size == 0:
                break
        slots[active, t] = choice
    return slots


def synth_dataset(out: Path, users: int = 2000, items: int = 1000, seed: int = 0) -> dict:
    """Write ``behaviors.tsv`` + ``news.tsv`` of a synthetic dataset to ``out`` (deterministic by seed).

    >>> synth_dataset(Path("data/synth"))   # doctest: +SKIP
    {'users': 2000, 'items': 1000, 'topics': 20, 'interactions': ..., 'seed': 0}
    """
    if users < 1:
        raise TcfError(f"synthetic users must be at least 1, got {users}")
    if items < 10:
        raise TcfError(f"synthetic items must be at least 10, got {items}")
    out = Path(out)
    check_output_folder(out)
    rng = np.random.default_rng(seed)
    cat = _catalogue(rng, items)  # item j has key N{j+1} (file order)
    titles = _titles(rng, cat)
    pref, pref_cdf, lengths = _preferences(rng, cat, users)
    slots = _clicks(rng, cat, pref, pref_cdf, lengths)
    keys = [f"N{j + 1}" for j in range(items)]
    behaviors = [(f"U{u + 1}", " ".join(keys[j] for j in cat.item_of_slot[slots[u, : lengths[u]]].tolist()))
                 for u in range(users)]
    with dataset_folder(out) as tmp:
        write_tsv(tmp / "news.tsv", "news_id\ttitle", zip(keys, titles, strict=True))
        write_tsv(tmp / BEHAVIORS_FILE, "user_id\titems", behaviors)
    return {"users": users, "items": items, "topics": cat.n_topics, "interactions": int(lengths.sum()), "seed": seed}
