"""Speed and memory benchmarks that print ratios against anchors (not tests)."""
