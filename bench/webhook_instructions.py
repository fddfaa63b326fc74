"""Instructions per `create` in the bridge's own code, counted by valgrind: the same figure on every run.

    .venv/bin/python bench/webhook_instructions.py [--count 500]

`bench/webhook.py` reads CPU per create as deployed, which moves by a tenth to a third with this
VM's spell (for the bare endpoint as much as for the bridge), so a change worth a few percent
cannot be seen there. This counts what the create path executes instead: the app's ASGI callable
driven in one process with its three exchanges answered in that process (the two Redis scripts'
replies and Sectra's stored result are canned, so no network, no server and no other process is
counted; each script's command is still packed, as the lane packs it before writing it), against
the bare endpoint's ASGI app (`bench/webhook.py`'s `bare_app`), each under
valgrind's callgrind. A figure is (the instructions of a warm-up and `--count` requests) minus (the
warm-up's alone), over `--count`; the ratio is against the bare endpoint counted in the same run.
What it leaves out is what `bench/webhook_parts.py` and the floor of `bench/webhook.py` measure:
the round trips themselves. Needs valgrind (`apt-get install valgrind`); no Redis, no Sectra.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
SECTRA_URL = "http://sectra.bench"
WARM_UP = 50
_COLLECTED = re.compile(r"Collected : (\d+)")


def _answered_in_process(app: Any) -> None:
    """The bridge's three exchanges answered without leaving the process: what the create-and-claim
    script answers for a new run, what the record script answers, and the result Sectra stores."""
    from sectra_client.schemas import ResultResponse
    from sectra_client.schemas.info import ApplicationInfo

    from sectra_adapter import VERSION_CACHE, StoredResult, normalise_base_url, pending_result_json
    from workers.redis_lane import LaneScript, encode_command
    from workers.runstore import CREATE_AND_CLAIM_SCRIPT

    state = app.state.bridge
    # Sectra's /info, as if asked once already this hour (`service.sectra_link.cached_callback_headers`).
    info = ApplicationInfo(apiVersion="1.10", softwareVersion="bench")
    VERSION_CACHE.get(normalise_base_url(SECTRA_URL, True), lambda: info)
    answer = pending_result_json("slide", "1").replace(b"{", b'{"id":1,"versionId":"v1",', 1)

    claim = LaneScript(CREATE_AND_CLAIM_SCRIPT).sha

    async def evalsha(script: LaneScript, keys: Any, args: Any) -> Any:
        # Packed as the lane packs a command before it writes it (hiredis, ~1 K instructions an argument).
        encode_command(("EVALSHA", script.sha, len(keys), *keys, *args))
        return [1, b"claimed"] if script.sha == claim else 1

    async def create_results(base_url: str, token: str, result: Any, *, path: str) -> StoredResult:
        return StoredResult(ResultResponse.model_validate_json(answer), answer.decode())

    state.loop.runs.lane.evalsha = evalsha
    state.loop.sectra.create_results = create_results


async def _requests(which: str, count: int) -> None:
    import webhook as bench_webhook
    import webhook_parts

    from service.app import create_app

    app = create_app() if which == "bridge" else bench_webhook.bare_app()
    async with app.router.lifespan_context(app):
        if which == "bridge":
            _answered_in_process(app)
        for _ in range(WARM_UP + count):
            assert await webhook_parts._asgi_post(app, webhook_parts._invocation(SECTRA_URL)) == 200


def _child(which: str, count: int) -> None:
    """One measured process (run under callgrind by `_count`)."""
    os.environ.update(SECTRA_ALLOWED_CALLBACK_URLS=SECTRA_URL, SECTRA_ALLOW_HTTP="true")
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:1/0")  # never connected to
    from workers.observability import configure_logging

    configure_logging("INFO")
    logging.getLogger().handlers[0].setStream(open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process
    import uvloop

    uvloop.run(_requests(which, count))


def _count(valgrind: str, which: str, count: int, out_dir: str) -> int:
    """The instructions callgrind counted in one child process."""
    done = subprocess.run(
        [
            valgrind,
            "--tool=callgrind",
            f"--callgrind-out-file={out_dir}/{which}.{count}.out",
            sys.executable,
            __file__,
            "_child",
            which,
            str(count),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"the {which} process failed under valgrind:\n{done.stderr[-3000:]}")
    return int(found.group(1))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "_child":
        _child(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=500, help="measured requests per app")
    args = parser.parse_args()
    valgrind = subprocess.run(["which", "valgrind"], capture_output=True, text=True).stdout.strip()
    if not valgrind:
        raise SystemExit("needs valgrind: apt-get install valgrind")
    runs = [(which, n) for which in ("bare", "bridge") for n in (0, args.count)]
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as out, ThreadPoolExecutor(2) as pool:
        counted = dict(zip(runs, pool.map(lambda run: _count(valgrind, *run, out), runs), strict=True))
    per = {w: (counted[(w, args.count)] - counted[(w, 0)]) / args.count for w in ("bare", "bridge")}
    print(f"instructions per request (callgrind; {args.count} requests after {WARM_UP} warm-up, in process):")
    bare, bridge = per["bare"], per["bridge"]
    own = bridge - bare
    print(f"  bare endpoint (ASGI app)          {bare / 1000:8.1f} K")
    print(f"  bridge create, exchanges canned   {bridge / 1000:8.1f} K  x{bridge / bare:.2f} the bare")
    print(f"  of which the bridge's own         {own / 1000:8.1f} K  x{own / bare:.2f}")


if __name__ == "__main__":
    main()
