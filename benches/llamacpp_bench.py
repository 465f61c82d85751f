"""llama.cpp side of benches/llamacpp-baseline.sh: load, prefill and decode timings.

Usage: python llamacpp_bench.py MODEL.gguf THREADS
Prints: RESULT engine=llama.cpp threads=T load_ms=.. prefill_tps=.. decode_tps=.. rss_mb=..
The prompt is the same text the Rust bench uses, cut to PROMPT_TOKENS tokens; decoding is
greedy for DECODE_TOKENS tokens with end-of-generation tokens masked out, as in the Rust bench.
"""
import os
import resource
import sys
import time

import numpy as np
from llama_cpp import Llama

TEXT = (
    "The history of railways begins with wagonways in the sixteenth century, when horses "
    "pulled carts along wooden rails in German mines. Iron rails followed in England, and "
    "by the early nineteenth century steam locomotives carried coal and passengers between "
    "towns. Switchyards, where trains are sorted and assembled, grew with the networks: "
    "a hump yard lets cars roll by gravity onto the right track, guided by switches and "
    "retarders. Modern yards are run by computers that plan each car's path, weigh it, and "
    "set its speed. The same ideas of routing, queues and throughput appear in computer "
    "networks, where packets are switched between links and buffered when links are busy. "
    "A router must decide quickly, keep state small, and never lose track of what it holds. "
) * 4


def main() -> None:
    path, threads = sys.argv[1], int(sys.argv[2])
    n_prompt = int(os.environ.get("PROMPT_TOKENS", "128"))
    n_decode = int(os.environ.get("DECODE_TOKENS", "128"))
    t0 = time.perf_counter()
    llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=1024,
                n_batch=512, verbose=False)
    load = time.perf_counter() - t0
    tokens = llm.tokenize(TEXT.encode(), add_bos=True)[:n_prompt]
    eog = {llm.token_eos()}
    t0 = time.perf_counter()
    llm.eval(tokens)
    prefill = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n_decode):
        logits = np.array(llm.scores[llm.n_tokens - 1])
        for t in eog:
            logits[t] = -np.inf
        llm.eval([int(np.argmax(logits))])
    decode = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"RESULT engine=llama.cpp threads={threads} load_ms={load * 1000:.1f} "
          f"prefill_tps={len(tokens) / prefill:.1f} decode_tps={n_decode / decode:.1f} "
          f"rss_mb={rss:.1f}", flush=True)


if __name__ == "__main__":
    main()
