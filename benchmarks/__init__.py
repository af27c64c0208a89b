"""Benchmark scripts: ``python -m benchmarks.<name>`` from the repository root."""


def cache_tag(text: str) -> str:
    """A level or basis name as it appears in cache file names: '6-31g(2df,p)' -> '6-31g2dfp',
    '6-31g*' -> '6-31gs' (no characters that some file systems refuse)."""
    return text.replace("(", "").replace(")", "").replace(",", "").replace("*", "s")
