"""Events and streams out: a workflow publishes its status and a stream of tokens; the caller
reads them while it runs.

To run: python examples/token_stream.py   (SQLite, no server; writes token_stream.db here)

The workflow ``drafts.reply.v1`` sets the event ``status``, writes each word of a reply to the
stream ``tokens`` (as an LLM would stream tokens), closes it, and sets ``status`` again. The
caller reads the stream as it is written (woken by each write, not polling), then the event;
a reader started after the workflow finished gets the same tokens, from the start.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import durable

REPLY = "Thanks for your order: it ships tomorrow and arrives on Friday."


@durable.step(name="drafts.next_word")
async def next_word(words: list[str], i: int) -> str:
    await asyncio.sleep(0.05)  # the model thinking
    return words[i]


@durable.workflow(name="drafts.reply.v1")
async def reply(text: str) -> int:
    await durable.set_event("status", "writing")
    words = text.split()
    for i in range(len(words)):
        await durable.write_stream("tokens", await next_word(words, i))
    await durable.close_stream("tokens")
    await durable.set_event("status", "done")
    return len(words)


async def main(url: str) -> None:
    async with durable.Runtime(durable.connect(url)) as runtime:
        await runtime.start_worker()
        workflow_id = await runtime.enqueue(reply, REPLY)
        print("status:", await runtime.get_event(workflow_id, "status", timeout=10))
        print("live:  ", end="", flush=True)
        async for token in runtime.read_stream(workflow_id, "tokens"):
            print(token, end=" ", flush=True)
        print()
        print("words: ", await runtime.result(workflow_id, timeout=30))
        print("status:", await runtime.get_event(workflow_id, "status"))
        later = [token async for token in runtime.read_stream(workflow_id, "tokens")]
        print("later: ", " ".join(later))


if __name__ == "__main__":
    asyncio.run(main(f"sqlite:///{Path('token_stream.db').resolve()}"))
