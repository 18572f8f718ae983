"""Generated conversations for the SFT demo and tests: short, regular exchanges a tiny model learns in
a few dozen steps, so a falling assistant-token loss is visible on a CPU.

Each conversation asks about one small sum or one definition from a fixed glossary, sometimes with a
system turn and sometimes over two exchanges; the answer repeats what the question named, so it is
predictable from the prompt. Deterministic for a given seed, in the chat-record shape
`{"id", "messages": [{"role", "content"}]}` that `tools/preprocess_sft.py` reads.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

GLOSSARY = {
    "entropy": "a measure of the uncertainty of a random variable",
    "a prime number": "a natural number greater than one whose only divisors are one and itself",
    "a vector space": "a set closed under addition and scalar multiplication",
    "a derivative": "the rate of change of a function with respect to its argument",
    "a manifold": "a space that locally looks like Euclidean space",
    "an eigenvalue": "a scalar by which a linear map stretches one of its eigenvectors",
}
SYSTEM_PROMPT = "You are a concise assistant for questions about mathematics and physics."
NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
]


def _exchange(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.5:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        return (
            f"What is {NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]}?",
            f"{NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]} is {NUMBER_WORDS[a + b]}.",
        )
    term = rng.choice(sorted(GLOSSARY))
    return f"What is {term}?", f"In short, {term} is {GLOSSARY[term]}."


def generate_conversations(n: int, seed: int = 0) -> Iterator[dict]:
    """`n` chat records; about a third open with the system prompt, a quarter have two exchanges."""
    rng = random.Random(seed)
    for i in range(n):
        messages = [{"role": "system", "content": SYSTEM_PROMPT}] if rng.random() < 0.33 else []
        for _ in range(2 if rng.random() < 0.25 else 1):
            question, answer = _exchange(rng)
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        yield {"id": f"synthetic-chat-{seed}-{i:06d}", "messages": messages}
