"""Embedded text workload: multi-round chat sessions rendered by a model's chat template.

The sessions are written for this project (varied topics and lengths). Round r+1's
conversation is round r's messages + the assistant reply + the next user message, so
the prompts share real template tokens with the round before: what a prefix cache
meets in production. Until a decode side returns real replies, the reply of each round
is the short canned answer written here.
"""

from __future__ import annotations

from typing import Protocol

from .request import Request
from .workload import ChatWorkload, Turn, sampling_mix


class ChatTokenizer(Protocol):
    def apply_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> list[int]: ...


_LONG = (
    "Here is the incident report from last night, please read all of it before answering. "
    "At 01:12 the checkout service began returning timeouts for roughly one request in "
    "twenty. The on-call engineer saw the database connection pool at its limit of 64 and "
    "raised it to 128, which made the timeouts rarer for about ten minutes before they came "
    "back at a higher rate. At 01:40 the cache cluster reported a failover: one replica had "
    "run out of memory because a batch job was writing session blobs of several megabytes "
    "each. The batch job was paused at 01:55, memory recovered, and the error rate dropped "
    "to zero by 02:05. Nobody noticed that the batch job had also been retrying failed "
    "writes without a backoff, so each failure produced three more writes. The deploy "
    "pipeline was frozen for the night. In the morning the team found that the pool size "
    "change had been applied to production only, not to staging, and that the dashboards "
    "for the cache cluster had an alert threshold of 98 percent that never fired because "
    "the replica crashed at 96 percent. What were the root causes, what should the action "
    "items be, and which of them would you do first? Please keep the answer practical. "
    "Some more context that may matter. The batch job is owned by the analytics team and "
    "was moved to the night window three weeks ago so that it would not compete with "
    "daytime traffic; before that it ran at noon with a smaller input and never came close "
    "to the cache's memory limit. Its input doubled when a new region went live last week. "
    "The cache cluster has three replicas with eight gigabytes each and evicts keys with a "
    "least-recently-used policy, but session blobs are written with no expiry, so under "
    "pressure the cluster evicted small, hot keys first and kept the large cold ones. The "
    "checkout service reads the user's cart from the cache and falls back to the database "
    "on a miss, which is why the database pool filled up at the same time. The pool change "
    "at 01:20 hid the symptom for a while and made the database itself slower, since it "
    "now served twice as many concurrent queries on the same four cores. During the "
    "incident two engineers were paged, one of them twice for the same alert because the "
    "deduplication window is five minutes and the alert flapped. The postmortem meeting is "
    "on Thursday, and the team lead asked for a written proposal in advance that covers "
    "alerting, capacity planning for the cache, retry policies for batch jobs, config "
    "drift between staging and production, and the on-call experience. The proposal should "
    "be short enough to read in ten minutes, with owners and rough dates for each item."
)

# (system prompt or "", [user messages], [canned assistant replies])
SESSIONS: list[tuple[str, list[str], list[str]]] = [
    ("", ["What is the capital of France?", "And how many people live there?",
          "Name three museums I should visit."],
     ["The capital of France is Paris.", "About two million in the city itself.",
      "The Louvre, the Musée d'Orsay and the Centre Pompidou."]),
    ("You are a concise assistant for software engineers.",
     ["How do I reverse a list in Python without modifying the original?",
      "Which one is faster for a list of a million integers?",
      "Show me the same thing in Rust."],
     ["Use slicing: `items[::-1]`, or `list(reversed(items))`.",
      "Slicing is usually a little faster; both are linear in time.",
      "`let rev: Vec<i32> = v.iter().rev().cloned().collect();`"]),
    ("", ["Write a haiku about autumn rain on a tin roof.",
          "Now make it about snow instead.", "Translate the first one into French."],
     ["Rain taps the tin roof / a thousand small drummers / the kettle agrees.",
      "Snow on the tin roof / silence heavier than rain / the stove ticks softly.",
      "La pluie sur le toit / mille petits tambours / la bouilloire approuve."]),
    ("You are a helpful math tutor. Explain steps briefly.",
     ["What is 17 times 23?", "How would I check that quickly in my head?",
      "Is 391 a prime number?"],
     ["17 x 23 = 391.", "Compute 17 x 20 = 340, then add 17 x 3 = 51: 391.",
      "No: 391 = 17 x 23."]),
    ("", [_LONG, "Which of those action items can be automated?",
          "Draft a two-sentence summary for the status page."],
     ["The root causes were an unbounded retry loop in the batch job and an alert "
      "threshold above the crash point.",
      "Alert thresholds, retry backoff checks and config drift detection.",
      "A batch job exhausted cache memory overnight and slowed checkout. It is fixed and "
      "we are adding safeguards."]),
    ("You are a travel planner. Answer with short bullet points.",
     ["Plan a relaxed two-day trip to Kyoto in November.",
      "What should I pack for the weather?", "Any food I must try?"],
     ["Day 1: Fushimi Inari early, then Gion. Day 2: Arashiyama and the bamboo grove.",
      "Layers, a light waterproof jacket and comfortable walking shoes.",
      "Yudofu, matcha sweets and a kaiseki dinner if the budget allows."]),
    ("", ["Explain the difference between TCP and UDP to a ten-year-old.",
          "Why would a video call prefer UDP?", "What does QUIC change?"],
     ["TCP is like a registered letter; UDP is like shouting across a playground.",
      "A late video frame is useless, so it is better to skip it than to wait.",
      "QUIC builds reliable streams on top of UDP and sets up connections faster."]),
    ("You are an assistant that answers in one paragraph.",
     ["Summarize the plot of a heist story in which the thieves try to steal a painting "
      "from a museum during a blackout, but the painting turns out to be a forgery that "
      "the museum director planted himself.",
      "Who is the most interesting character and why?",
      "Suggest a title."],
     ["A crew plans a blackout heist, only to learn the director swapped the painting "
      "for a forgery to cover his own debts.",
      "The director: a respected man quietly robbing his own museum.",
      "The Second Canvas."]),
    ("", ["😀 Can you read emoji? 🎉🚀", "What about Chinese: 你好，世界？",
          "Tabs\tand   multiple    spaces, and numbers like 1234567890?"],
     ["Yes, I can read emoji like 😀 and 🎉.", "Yes: 你好，世界 means hello, world.",
      "Yes, whitespace and 1234567890 are fine."]),
    ("You review SQL queries.",
     ["SELECT * FROM orders WHERE created_at > NOW() - INTERVAL '7 days' ORDER BY total DESC;"
      " Is this efficient on a table with 50 million rows?",
      "What index would you add?", "And if we also filter by customer_id?"],
     ["Only with an index on created_at; SELECT * also reads every column.",
      "CREATE INDEX ON orders (created_at);",
      "A composite index on (customer_id, created_at) serves both filters."]),
]  # fmt: skip


def conversation(system: str, users: list[str], replies: list[str], r: int) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    for i in range(r + 1):
        msgs.append({"role": "user", "content": users[i]})
        if i < r:
            msgs.append({"role": "assistant", "content": replies[i]})
    return msgs


def text_chat_sessions(tokenizer: ChatTokenizer, w: ChatWorkload) -> list[list[Turn]]:
    """``w.num_sessions`` sessions of ``w.rounds`` turns (cycling through ``SESSIONS``),
    each prompt the template-rendered conversation so far, cut to ``w.max_prompt_len``
    tokens from the left (a real engine would refuse or truncate the same way)."""
    sessions = []
    for s in range(w.num_sessions):
        system, users, replies = SESSIONS[s % len(SESSIONS)]
        sampling = sampling_mix(s, w.seed)
        turns = []
        for r in range(min(w.rounds, len(users))):
            msgs = conversation(system, users, replies, r)
            ids = list(tokenizer.apply_chat_template(msgs, add_generation_prompt=True))
            req = Request(f"s{s}-r{r}", ids[-w.max_prompt_len :], sampling)
            turns.append(Turn(s, r, req, text=users[r], messages=tuple(msgs)))
        sessions.append(turns)
    return sessions
