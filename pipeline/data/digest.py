"""Per-sample digests: what the sharder writes and the loader checks (no torch: the sharder imports it).

The sharder writes a `<key>.sha256` member holding `sample_digest` of the sample's other members; the
loader recomputes it before decoding, so a sample whose bytes changed after sharding is never trained
on. sha256 uses the CPU's SHA instructions (faster than blake2b there) and costs a small share of
decoding the clip (the README has the figure, from bench/loader.py --digest-cost). Shards written
before digests existed have no such member: their samples load without the check.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

DIGEST_MEMBER = "sha256"


def sample_digest(members: Mapping[str, bytes]) -> str:
    """sha256 hex of a sample's members: each suffix, its length and its bytes, in suffix order.

    Webdataset's bookkeeping fields (`__key__`, `__url__`, ...) and the digest member itself are left
    out, so the same function serves the sharder (member bytes) and the loader (a webdataset sample).
    """
    digest = hashlib.sha256()
    for ext in sorted(members):
        if ext.startswith("__") or ext == DIGEST_MEMBER:
            continue
        data = members[ext]
        digest.update(f"{ext}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def digest_problem(sample: Mapping[str, bytes]) -> str | None:
    """Why `sample`'s bytes differ from what the sharder wrote; None when they match or it has no digest."""
    recorded = sample.get(DIGEST_MEMBER)
    if recorded is None:
        return None
    if recorded.decode("ascii", "replace").strip() != sample_digest(sample):
        return "sample bytes differ from what the sharder wrote (sha256 member mismatch)"
    return None
