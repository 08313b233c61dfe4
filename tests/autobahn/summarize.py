#!/usr/bin/env python3
"""Summarise Autobahn|TestSuite fuzzingclient reports for ringws.

Usage: summarize.py ALLOWLIST BACKEND=REPORTDIR [BACKEND=REPORTDIR ...]

Reads REPORTDIR/index.json for each backend, prints a table of verdict counts
(behavior and behaviorClose) per backend, lists every case that is not clean,
and decides pass/fail per case:

  * behavior FAILED, or behaviorClose FAILED / FAILED BY CLIENT
        -> failed (cannot be allowlisted)
  * behavior NON-STRICT / UNIMPLEMENTED / anything unknown,
    or behaviorClose other than OK / INFORMATIONAL (WRONG CODE, UNCLEAN, ...)
        -> failed unless the case id is in ALLOWLIST
  * behavior OK or INFORMATIONAL with behaviorClose OK or INFORMATIONAL
        -> passed

A backend whose index.json is missing (server did not start, wstest timed
out, ...) counts as one failure. Writes REPORTDIR/../summary.md and exits 1
if anything failed. The last line printed is `autobahn: N passed, M failed`
(N and M count case results summed over backends).
"""
import json
import os
import re
import sys

BEHAVIOR_COLS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
CLOSE_COLS = ["OK", "INFORMATIONAL", "NON-STRICT", "WRONG CODE", "UNCLEAN",
              "FAILED BY CLIENT", "FAILED"]
CLEAN_BEHAVIOR = {"OK", "INFORMATIONAL"}
CLEAN_CLOSE = {"OK", "INFORMATIONAL"}
HARD_BEHAVIOR = {"FAILED"}
HARD_CLOSE = {"FAILED", "FAILED BY CLIENT"}


def case_key(case_id):
    out = []
    for part in case_id.split("."):
        try:
            out.append((0, int(part)))
        except ValueError:
            out.append((1, part))
    return out


def load_allowlist(path):
    allow = {}
    if not os.path.exists(path):
        return allow
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split(None, 1)
            if len(parts) < 2 or not parts[1].strip():
                sys.exit("%s:%d: every allowlist entry needs a reason: %r" % (path, n, line))
            allow[parts[0]] = parts[1].strip()
    return allow


def shorten(value, limit=300):
    text = json.dumps(value) if not isinstance(value, str) else value
    text = " ".join(re.sub(r"<br\s*/?>", " ", text).split())
    return text if len(text) <= limit else text[:limit] + "... (%d chars)" % len(text)


def describe(reportdir, entry):
    """A short excerpt of the per-case report: what was sent / expected / seen."""
    path = os.path.join(reportdir, entry.get("reportfile", ""))
    try:
        with open(path) as f:
            rep = json.load(f)
    except (OSError, ValueError):
        return ["    (no per-case report at %s)" % path]
    lines = []
    for key in ("description", "expectation", "result", "resultClose"):
        if rep.get(key):
            lines.append("    %-12s %s" % (key + ":", shorten(rep[key])))
    if rep.get("expected"):
        lines.append("    %-12s %s" % ("expected:", shorten(rep["expected"])))
    if "received" in rep:
        lines.append("    %-12s %s" % ("received:", shorten(rep["received"])))
    frames = []
    prev = None
    for w in rep.get("wirelog") or []:
        try:
            kind = w[0]
            if kind in ("TF", "RF"):
                (n, data), opcode, fin, rsv = w[1], w[2], w[3], w[4]
                if len(data) > 40:
                    data = data[:40] + "..."
                frames.append("%s frame op=%s fin=%s rsv=%s len=%s %r" % (
                    "sent" if kind == "TF" else "recv", opcode, int(bool(fin)), rsv, n, data))
            elif kind == "TO" and prev != "TF":
                n, hexdata = w[1]
                if not hexdata.startswith("474554"):  # skip the HTTP upgrade request
                    frames.append("sent raw %s octets %s" % (n, hexdata[:40] + ("..." if len(hexdata) > 40 else "")))
            elif kind == "CT":
                frames.append("(client waits %ss for an answer: %s)" % (w[1], w[2]))
            elif kind == "CTE":
                frames.append("(wait %s expired, nothing received)" % w[1])
            elif kind == "KL":
                frames.append("(client kills the TCP connection after %ss)" % w[1])
            prev = kind
        except (IndexError, TypeError, ValueError):
            continue
    if len(frames) > 14:
        frames = frames[:6] + ["... %d more frames ..." % (len(frames) - 12)] + frames[-6:]
    for i, fr in enumerate(frames):
        lines.append("    %-12s %s" % ("frames:" if i == 0 else "", fr))
    lines.append("    %-12s local close %s / remote close %s, wasClean=%s" % (
        "close:", rep.get("localCloseCode"), rep.get("remoteCloseCode"), rep.get("wasClean")))
    lines.append("    %-12s %s" % ("report:", path))
    return lines


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    allow = load_allowlist(argv[1])
    backends = [a.split("=", 1) for a in argv[2:]]

    passed = failed = 0
    rows = []
    problems = []
    used_allow = set()
    for backend, reportdir in backends:
        index_path = os.path.join(reportdir, "index.json")
        try:
            with open(index_path) as f:
                index = json.load(f)
        except (OSError, ValueError) as e:
            problems.append("FAIL %s: no usable report (%s): see %s/wstest.log and %s/ringws.log"
                            % (backend, e, reportdir, reportdir))
            rows.append((backend, None, None, 0))
            failed += 1
            continue
        cases = {}
        for agent_cases in index.values():
            cases.update(agent_cases)
        beh_counts = dict.fromkeys(BEHAVIOR_COLS, 0)
        close_counts = dict.fromkeys(CLOSE_COLS, 0)
        for case_id in sorted(cases, key=case_key):
            entry = cases[case_id]
            b = entry.get("behavior", "?")
            c = entry.get("behaviorClose", "?")
            beh_counts[b] = beh_counts.get(b, 0) + 1
            close_counts[c] = close_counts.get(c, 0) + 1
            verdict = "%s / close %s" % (b, c)
            if b in HARD_BEHAVIOR or c in HARD_CLOSE:
                failed += 1
                problems.append("FAIL %s %s: %s" % (backend, case_id, verdict))
                problems.extend(describe(reportdir, entry))
            elif b in CLEAN_BEHAVIOR and c in CLEAN_CLOSE:
                passed += 1
            elif case_id in allow:
                passed += 1
                used_allow.add(case_id)
                problems.append("allowed %s %s: %s (allowlist: %s)" % (backend, case_id, verdict, allow[case_id]))
            else:
                failed += 1
                problems.append("FAIL %s %s: %s (not in allowlist)" % (backend, case_id, verdict))
                problems.extend(describe(reportdir, entry))
        rows.append((backend, beh_counts, close_counts, len(cases)))

    out = []
    beh_extra = sorted({k for _, b, _, _ in rows if b for k in b} - set(BEHAVIOR_COLS))
    close_extra = sorted({k for _, _, c, _ in rows if c for k in c} - set(CLOSE_COLS))
    bcols = BEHAVIOR_COLS + beh_extra
    ccols = CLOSE_COLS + close_extra
    # run.sh says which cases ran and with which server options.
    out.append("Autobahn|TestSuite fuzzingclient, cases %s" % os.environ.get(
        "AUTOBAHN_RUN_LABEL", "1-10 (12-13, permessage-deflate, excluded)"))
    out.append("")
    out.append("| backend | cases | behavior: " + " | ".join(bcols) + " |")
    out.append("|---|---:|" + "---:|" * len(bcols))
    for backend, b, c, n in rows:
        if b is None:
            out.append("| %s | no report |%s" % (backend, " |" * len(bcols)))
        else:
            out.append("| %s | %d | " % (backend, n) + " | ".join(str(b.get(k, 0)) for k in bcols) + " |")
    out.append("")
    out.append("| backend | cases | behaviorClose: " + " | ".join(ccols) + " |")
    out.append("|---|---:|" + "---:|" * len(ccols))
    for backend, b, c, n in rows:
        if c is None:
            out.append("| %s | no report |%s" % (backend, " |" * len(ccols)))
        else:
            out.append("| %s | %d | " % (backend, n) + " | ".join(str(c.get(k, 0)) for k in ccols) + " |")
    table = "\n".join(out)
    print(table)
    print("")
    for line in problems:
        print(line)
    unused = sorted(set(allow) - used_allow, key=case_key)
    if unused:
        print("note: allowlist entries not needed in this run: " + ", ".join(unused))
    if backends:
        summary_path = os.path.join(os.path.dirname(os.path.abspath(backends[0][1])), "summary.md")
        with open(summary_path, "w") as f:
            f.write(table + "\n")
    print("")
    print("autobahn: %d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
