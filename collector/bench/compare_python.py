"""Times prometheus_client's text parser on one page for compare_python.sh.

Prints the median seconds per parse over N parses, then the family and sample counts.
Usage: compare_python.py FILE N
"""

import statistics
import sys
import time

from prometheus_client.parser import text_string_to_metric_families


def parse_all(text):
    # The parser is a generator: consume every family and sample, as a real reader would.
    families = 0
    samples = 0
    for family in text_string_to_metric_families(text):
        families += 1
        samples += len(family.samples)
    return families, samples


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: compare_python.py FILE ITERATIONS")
    path, iterations = sys.argv[1], int(sys.argv[2])
    with open(path, encoding="utf-8") as page:
        text = page.read()
    families, samples = parse_all(text)  # warm-up, and the counts to report
    seconds = []
    for _ in range(iterations):
        start = time.perf_counter()
        parse_all(text)
        seconds.append(time.perf_counter() - start)
    print(f"{statistics.median(seconds):.9f} {families} {samples}")


if __name__ == "__main__":
    main()
