"""After the whole test suite: look for every credential the tests handed the proxy (recorded by
tests/common/leaks.rs) in every log a proxy wrote during the suite. Exit 1 naming each find
(the secret shortened, the log, the line number), or when nothing was recorded (the check would
prove nothing)."""
import pathlib
import sys


def main():
    root = pathlib.Path(sys.argv[1])
    secrets = set()
    for f in sorted((root / "secrets").glob("*.txt")):
        secrets.update(s for s in f.read_text(errors="replace").splitlines() if s)
    logs = sorted((root / "logs").glob("*.log"))
    if not secrets or not logs:
        print(f"log leak check: nothing recorded under {root} "
              f"({len(secrets)} secrets, {len(logs)} logs)", file=sys.stderr)
        return 1
    finds = 0
    for log in logs:
        text = log.read_text(errors="replace")
        hits = [s for s in secrets if s in text]
        for s in hits:
            line = text[: text.index(s)].count("\n") + 1
            print(f"log leak: {s[:8]}... ({len(s)} chars) in {log} line {line}", file=sys.stderr)
            finds += 1
    print(f"log leak check: {len(secrets)} secrets, {len(logs)} logs, {finds} found")
    return 1 if finds else 0


if __name__ == "__main__":
    sys.exit(main())
