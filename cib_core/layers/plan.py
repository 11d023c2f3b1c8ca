"""The plan of a layer whose sources cannot stream: every entry a ``Record``, sorted, the last
one of each path kept, hard links resolved."""

from __future__ import annotations

import bisect
import stat
import tarfile

from cib_core.errors import LayerSourceError
from cib_core.layers.fingerprint import file_identity
from cib_core.layers.tar import Record, sort_key
from cib_core.plugin_api import LazyFile

_DIRTYPE, _LNKTYPE = tarfile.DIRTYPE, tarfile.LNKTYPE


def detached(rec: Record) -> Record:
    """``rec`` keeping a local file by its path and identity rather than by a ``LazyFile``
    holding the listing's ``stat`` result: the form a planned record waits in."""
    content = rec.content
    if type(content) is LazyFile and not content.opened and not content.closed:
        st = content.stat_result
        if st is not None and stat.S_ISREG(st.st_mode):
            return rec._replace(content=content.name, ident=file_identity(st))
    return rec


def planned(records: list[Record]) -> list[Record]:
    """``records`` (in the order given) sorted, the last of each path kept, hard links
    resolved: the first entry of a group in path order carries the content, the others
    link to it."""
    records.sort(key=lambda r: sort_key(r.path))  # stable: the last given of a path is last
    plan: list[Record] = []
    for rec in records:
        if plan and plan[-1].path == rec.path:
            old = plan[-1].content
            if old is not None and not isinstance(old, str) and old is not rec.content:
                old.close()
            plan[-1] = rec
        else:
            plan.append(rec)
    links = [i for i, rec in enumerate(plan) if rec.type == _LNKTYPE]
    if not links:
        return plan

    def find(path: str) -> int | None:
        i = bisect.bisect_left(plan, sort_key(path), key=lambda r: sort_key(r.path))
        return i if i < len(plan) and plan[i].path == path else None

    groups: dict[int, list[int]] = {}
    for i in links:
        root, seen = i, {i}
        while plan[root].type == _LNKTYPE:
            nxt = find(plan[root].link)
            if nxt is None:
                raise LayerSourceError(plan[i].origin, f"{plan[i].path!r} is a hard link to "
                                       f"{plan[root].link!r}, which is not in the layer")
            if nxt in seen:
                raise LayerSourceError(plan[i].origin, f"{plan[i].path!r} is part of a hard-link cycle")
            seen.add(nxt)
            root = nxt
        if plan[root].type == _DIRTYPE:
            raise LayerSourceError(plan[i].origin, f"{plan[i].path!r} is a hard link to the "
                                   f"directory {plan[root].path!r}")
        groups.setdefault(root, [root]).append(i)
    for root, members in groups.items():
        members.sort()  # indices of a sorted list: path order
        first = members[0]
        if first != root:
            plan[first] = plan[root]._replace(path=plan[first].path)
        for m in members[1:]:
            plan[m] = plan[m]._replace(type=_LNKTYPE, link=plan[first].path, size=0,
                                       content=None, ident=None, extra=None)
    return plan
