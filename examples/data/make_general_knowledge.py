#!/usr/bin/env python3
"""Writes general_knowledge.jsonl: a small held-out set of general-knowledge questions with short,
plain (not pirate) answers, which the demo evaluates with `--eval-data general=...` before and
after fine-tuning: its loss rising would show the adapter forgetting what the model knew.

    python3 examples/data/make_general_knowledge.py

Deterministic; checks that no question is in pirate_chat.jsonl or pirate_prompts.txt.
"""

import json
import os

PAIRS = [
    ("What is the capital of Poland?", "The capital of Poland is Warsaw."),
    ("What is the capital of Sweden?", "The capital of Sweden is Stockholm."),
    ("What is the capital of Peru?", "The capital of Peru is Lima."),
    ("What is the largest continent?", "Asia is the largest continent."),
    ("In which country is the Eiffel Tower?", "The Eiffel Tower is in France."),
    ("What is the main language of Argentina?", "The main language of Argentina is Spanish."),
    ("What is the currency of the United States?", "The currency of the United States is the dollar."),
    ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet."),
    ("Who wrote Pride and Prejudice?", "Jane Austen wrote Pride and Prejudice."),
    ("Who painted the ceiling of the Sistine Chapel?", "Michelangelo painted the ceiling of the Sistine Chapel."),
    ("What is the chemical symbol for oxygen?", "The chemical symbol for oxygen is O."),
    ("What is the chemical symbol for silver?", "The chemical symbol for silver is Ag."),
    ("What is 9 times 6?", "9 times 6 is 54."),
    ("What is the square root of 49?", "The square root of 49 is 7."),
    ("How many sides does a pentagon have?", "A pentagon has five sides."),
    ("How many hours are in a day?", "There are 24 hours in a day."),
]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    taken = set()
    with open(os.path.join(here, "pirate_chat.jsonl")) as f:
        for line in f:
            for m in json.loads(line)["messages"]:
                if m["role"] == "user":
                    taken.add(m["content"].strip().lower())
    with open(os.path.join(here, "pirate_prompts.txt")) as f:
        taken.update(l.strip().lower() for l in f if l.strip())
    questions = [q.lower() for q, _ in PAIRS]
    assert len(set(questions)) == len(questions), "duplicate question"
    clash = [q for q in questions if q in taken]
    assert not clash, f"in the demo's training data or prompts: {clash}"
    out = os.path.join(here, "general_knowledge.jsonl")
    with open(out, "w") as f:
        for q, a in PAIRS:
            rec = {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            f.write(json.dumps(rec) + "\n")
    print(f"wrote {len(PAIRS)} records to {out}")


if __name__ == "__main__":
    main()
