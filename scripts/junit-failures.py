#!/usr/bin/env python3
"""Print, for each failed test in a nextest JUnit file, its failure message and the
last lines of its output that are not routine log lines. Used by scripts/test.sh so
that the reason for a red run is the last thing it prints."""
import re
import sys
import xml.etree.ElementTree as ET

LAST = 25
NOISE = re.compile(r"^\s*\S*\s*(\x1b\[[0-9;]*m)*\s*(TRACE|DEBUG|INFO)\b")
# Backtrace frames (RUST_BACKTRACE=1): where, not why.
FRAME = re.compile(r"^\s*(\d+: |at /|at \./|Stack backtrace:)")


def main(path: str) -> int:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        print(f"no JUnit report at {path}: {e}")
        return 1
    for case in root.iter("testcase"):
        failures = [c for c in case if c.tag in ("failure", "error")]
        if not failures:
            continue
        print(f"--- {case.get('classname')} {case.get('name')}")
        for f in failures:
            print(f"    {f.tag}: {(f.get('message') or '').strip()[:500]}")
        text = "\n".join((case.findtext(t) or "") for t in ("system-out", "system-err"))
        lines = [l for l in text.splitlines() if l.strip() and not NOISE.match(l) and not FRAME.match(l)]
        for line in lines[-LAST:]:
            print(f"    | {line[:300]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "target/nextest/default/junit.xml"))
