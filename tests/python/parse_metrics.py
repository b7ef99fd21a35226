"""Parse a Prometheus text exposition from stdin with prometheus_client's own parser and print
every sample as one JSON object per line: {"name", "labels", "value"}; then a last line
{"families": [{"name", "type", "help"}]}. Any parse error exits non-zero with the parser's
message, so a test that feeds it a malformed exposition fails."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    text = sys.stdin.read()
    families = []
    for fam in text_string_to_metric_families(text):
        families.append({"name": fam.name, "type": fam.type, "help": fam.documentation})
        for s in fam.samples:
            print(json.dumps({"name": s.name, "labels": s.labels, "value": s.value}))
    print(json.dumps({"families": families}))


if __name__ == "__main__":
    main()
